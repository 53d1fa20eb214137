#!/usr/bin/env bash
# A real multi-node Ray cluster on this machine: a head on 127.0.0.2 and workers on .3, .4, ...
# each its own `ray start` process with a node resource ptncn_node_<i>.
#   cluster/local_cluster.sh up [NODES]     start (prints how to join it)
#   cluster/local_cluster.sh down           stop exactly the processes `up` started, by pid
set -euo pipefail
state="${PTNCN_CLUSTER_STATE:-${TMPDIR:-/tmp}/ptncn-cluster.json}"
case "${1:-}" in
  up)   python -m ptncn_dist.studies.local_cluster up --nodes "${2:-3}" --state "$state" ;;
  down) python -m ptncn_dist.studies.local_cluster down --state "$state" ;;
  *)    echo "usage: $0 up [NODES] | down" >&2; exit 2 ;;
esac

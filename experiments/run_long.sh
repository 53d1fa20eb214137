#!/usr/bin/env bash
# The comparison's long scale, every experiment in turn, each continuing where an earlier
# command stopped (finished trials are never rerun; an unfinished one resumes from its last
# Tune checkpoint). About 16 trial-hours, two one-core trials at once. From the repository root:
#
#   nohup bash experiments/run_long.sh > runs/long.log 2>&1 &
#
# Results land in experiments/results/<experiment>/long/ as each experiment finishes.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
status=0
for args in "bouncing" "zeroshot" "continual" "ptb --datasets char"; do
  echo "== $(date -u +%FT%TZ) python -m experiments.compare $args --scale long"
  # shellcheck disable=SC2086  # $args holds several words on purpose
  $PY -m experiments.compare $args --scale long "$@" || status=1
done
echo "== $(date -u +%FT%TZ) done (status $status)"
exit $status

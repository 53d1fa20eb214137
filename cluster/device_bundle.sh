#!/usr/bin/env bash
# Build, here, what the GPU device machine needs and lacks: Ray (trimmed, xz-packed) and the small
# wheels its core import, `ray.init` and this package need (jsonschema and its needs, click,
# filelock, protobuf, pyyaml, requests, pyzmq, ...), all for CPython 3.12 manylinux x86_64.
#
#     bash cluster/device_bundle.sh            # -> build/device/ (ignored by git)
#
# The device has Python 3.12, CuPy, NumPy, msgpack, PyTorch and pytest and cannot download, and
# at most 64 MiB travel to it per run; carry build/device with the run (the device tool's carry)
# and `bash experiments/device_check.sh` installs it offline.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${BUNDLE_OUT:-build/device}
PY=${PY:-.venv/bin/python}
RAY_VERSION=${RAY_VERSION:-$("$PY" -c "import ray; print(ray.__version__)")}
PIP=("$PY" -m pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64
     --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --implementation cp --abi cp312
     --abi abi3 --abi none --no-deps --quiet)
# What Ray's core (ray.init, actors, compiled graphs) and this package import, beyond what the
# device has (numpy, msgpack, torch's needs: filelock, typing_extensions, jinja2, ...). Found by
# installing into a Python 3.12 venv that holds only numpy, msgpack and pytest (see README).
WHEELS=(click filelock jsonschema jsonschema-specifications referencing rpds-py attrs
        "protobuf<7" pyyaml requests urllib3 idna certifi charset-normalizer packaging
        pyzmq threadpoolctl tqdm typing_extensions mlxtend)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rm -rf "$OUT"
mkdir -p "$OUT/wheels"
"${PIP[@]}" -d "$tmp" "ray==$RAY_VERSION"
"${PIP[@]}" -d "$OUT/wheels" "${WHEELS[@]}"

# Unpack Ray and trim what ray.init + actors + compiled graphs never load.
mkdir "$tmp/ray"
# (zipfile keeps no file modes: the gcs_server and raylet binaries must stay executable)
"$PY" - "$tmp"/ray-*.whl "$tmp/ray" <<'EOF'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for info in z.infolist():
        path = z.extract(info, sys.argv[2])
        mode = info.external_attr >> 16
        if mode and not info.is_dir():
            os.chmod(path, mode & 0o777)
EOF
r="$tmp/ray/ray"
before=$(du -sm "$tmp/ray" | cut -f1)
rm -rf "$r/jars" "$r/rllib" "$r/serve" "$r/data" "$r/tune" "$r/train" "$r/llm" \
       "$r/dashboard/client" "$r/tests" "$r/cpp" \
       "$r/workflow" "$r/util/dask" "$r/util/spark"
find "$tmp/ray" -name '__pycache__' -prune -exec rm -rf {} +
find "$tmp/ray" -type d -name tests -prune -exec rm -rf {} +
# Console scripts would name Ray modules that are gone; ray.init does not need them.
after=$(du -sm "$tmp/ray" | cut -f1)
echo "ray $RAY_VERSION unpacked: ${before} MB, trimmed: ${after} MB"
du -sm "$r"/* 2>/dev/null | sort -rn | head -8
tar -C "$tmp/ray" -cf - . | xz -T0 -6 > "$OUT/ray-$RAY_VERSION-cp312-trimmed.tar.xz"
echo "$RAY_VERSION" > "$OUT/RAY_VERSION"
ls -la "$OUT" "$OUT/wheels"
du -sh "$OUT"

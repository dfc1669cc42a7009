#!/usr/bin/env bash
# Here, before a GPU run: the wheels that the lent GPU machine's image lacks (polars, TRL and what TRL needs beyond
# it, DeepSpeed for gpu.sh's sharded step), for its Python 3.12, into .whl/ (about 57 MB; git ignores it).
# bench/gpu.sh installs them there.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    polars==2.1.0 polars-runtime-32==2.1.0 trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
    hjson==3.1.0 msgpack==1.2.4
# DeepSpeed is published as source only: built here into a pure-Python wheel (its ops compile where they run)
python3 -m pip wheel -q --no-deps -w .whl deepspeed==0.19.8
du -sh .whl

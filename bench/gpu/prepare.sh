#!/usr/bin/env bash
# Make the carry folder for bench/gpu/run.sh, here (CPU, PyPI reachable): docs/gpu-check.md.
#
#     bash bench/gpu/prepare.sh [SCENE]        # SCENE of ../shared/datasets, default fountain-P11
#
# 1. the real `frames` and `sfm` stages (preset standard) on the scene's photos, through
#    batch_jobs.runner.run_stage; what splat, depth and mesh read is copied to $CARRY/ws;
# 2. gsplat's sdist (the version constraints.txt pins) to $CARRY/sdist, built on the GPU machine;
# 3. the wheels our code needs that the GPU machine's image lacks (pycolmap, plyfile; for its
#    Python 3.12, x86-64) to $CARRY/wheels;
# 4. what a device call would then carry, against its 64 MiB.
# The carry folder is ignored through .git/info/exclude; a device call names it in `carry`.
set -euo pipefail
cd "$(dirname "$0")/../.."
SCENE=${1:-fountain-P11}
CARRY=${GPU_CARRY:-.gpu-carry}
PY=${PY:-.venv/bin/python}
EXCLUDE=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$EXCLUDE")"
grep -qxF "/$CARRY/" "$EXCLUDE" 2>/dev/null || echo "/$CARRY/" >> "$EXCLUDE"
pin() { sed -n "s/^$1==//p" constraints.txt; }
rm -rf "$CARRY/sdist" "$CARRY/wheels"
mkdir -p "$CARRY/sdist" "$CARRY/wheels"

nice -n 10 "$PY" bench/gpu/gpu_check.py prepare --scene "$SCENE" --carry "$CARRY" --preset standard

# gsplat's setup.py needs CUDA to describe itself; BUILD_NO_CUDA=1 lets pip fetch the sdist here.
BUILD_NO_CUDA=1 "$PY" -m pip download -q --no-deps --no-binary :all: --no-build-isolation \
    -d "$CARRY/sdist" "gsplat==$(pin gsplat)"

"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$CARRY/wheels" \
    "pycolmap==$(pin pycolmap)" "plyfile==$(pin plyfile)"

du -sh "$CARRY"/*
"$PY" bench/gpu/gpu_check.py size --carry "$CARRY"

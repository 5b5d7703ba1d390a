#!/usr/bin/env bash
# Build OpenSplat (pierotofy/OpenSplat) CPU-only against the libtorch of our .venv, for
# bench/splat_peer.py. Nothing of OpenSplat is copied into this repository: the source is
# exported from a git repository into .cache/ (git-ignored) and built there.
#
#   bench/peers/build_opensplat.sh            # -> .cache/opensplat/build/opensplat
#
# Sources (bare or normal git repositories; defaults are this workplace's mirrors, else GitHub):
#   OPENSPLAT_GIT   pierotofy/OpenSplat  at OPENSPLAT_REV (default v1.1.5 if tagged, else HEAD;
#                   HEAD 15b7e80 of 2025-11-20 has VERSION 1.1.5 and no v1.1.5 tag)
#   OpenSplat's CMake FetchContent's its three header-only dependencies from GitHub at configure
#   time; we pin the same tags from git instead (FETCHCONTENT_SOURCE_DIR_*), so the build needs
#   no network: nlohmann/json v3.11.3, jlblancoc/nanoflann v1.5.5, jarro2783/cxxopts v3.2.0.
# System packages (Debian): cmake g++ make libopencv-dev.
# The compile is CPU-heavy: it takes the shared lock /tmp/splatpipe-heavy.lock and runs -j2.
set -euo pipefail
# Measured 2026-12-07 on the 2-core development machine: 209 s with -j2 (HEAD 15b7e80, CPU, Release).

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DEST="${OPENSPLAT_DIR:-$ROOT/.cache/opensplat}"
JOBS="${JOBS:-2}"
MIRROR="${MIRROR:-/work/.mirror}"

repo() {  # repo OWNER+NAME OWNER/NAME: a local mirror if there is one, else clone from GitHub
    local m="$MIRROR/$1/repo"
    if [ -d "$m" ]; then echo "$m"; return; fi
    local c="$DEST/git/$1"
    [ -d "$c" ] || git clone --bare "https://github.com/$2.git" "$c" >&2
    echo "$c"
}

export_rev() {  # export_rev GITDIR REV OUTDIR
    rm -rf "$3"; mkdir -p "$3"
    git --git-dir="$1" archive "$2" | tar -x -C "$3"
}

OS_GIT="${OPENSPLAT_GIT:-$(repo pierotofy+OpenSplat pierotofy/OpenSplat)}"
if [ -z "${OPENSPLAT_REV:-}" ]; then
    if git --git-dir="$OS_GIT" rev-parse -q --verify v1.1.5 >/dev/null; then OPENSPLAT_REV=v1.1.5; else OPENSPLAT_REV=HEAD; fi
fi
OS_COMMIT="$(git --git-dir="$OS_GIT" rev-parse "$OPENSPLAT_REV^{commit}")"
echo "OpenSplat $OPENSPLAT_REV = $OS_COMMIT"

mkdir -p "$DEST/deps"
export_rev "$OS_GIT" "$OS_COMMIT" "$DEST/src"
echo "$OS_COMMIT" > "$DEST/src/COMMIT"
export_rev "$(repo nlohmann+json nlohmann/json)" v3.11.3 "$DEST/deps/json"
export_rev "$(repo jlblancoc+nanoflann jlblancoc/nanoflann)" v1.5.5 "$DEST/deps/nanoflann"
export_rev "$(repo jarro2783+cxxopts jarro2783/cxxopts)" v3.2.0 "$DEST/deps/cxxopts"

# OpenSplat's CMake stamps `git rev-parse HEAD` of its source folder into --version; ours is
# inside this repository, so stop git from finding it (the OpenSplat commit is in src/COMMIT).
export GIT_CEILING_DIRECTORIES="$DEST"
TORCH_PREFIX="$("$ROOT/.venv/bin/python" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
cmake -S "$DEST/src" -B "$DEST/build" \
    -DCMAKE_BUILD_TYPE=Release \
    -DGPU_RUNTIME=CPU \
    -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" \
    -DFETCHCONTENT_FULLY_DISCONNECTED=ON \
    -DFETCHCONTENT_SOURCE_DIR_NLOHMANN_JSON="$DEST/deps/json" \
    -DFETCHCONTENT_SOURCE_DIR_NANOFLANN="$DEST/deps/nanoflann" \
    -DFETCHCONTENT_SOURCE_DIR_CXXOPTS="$DEST/deps/cxxopts"
t0=$(date +%s)
flock /tmp/splatpipe-heavy.lock cmake --build "$DEST/build" -j"$JOBS"
echo "built $DEST/build/opensplat (OpenSplat $OS_COMMIT) in $(( $(date +%s) - t0 )) s with -j$JOBS"

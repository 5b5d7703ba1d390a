#!/usr/bin/env bash
# Installs what splatpipe needs on a Debian machine: system packages (when root), then a venv
# with the package and every extra, always under constraints.txt (it pins the CPU torch).
set -euo pipefail
venv="${1:-.venv}"
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0' || need_apt+=(libusb-1.0-0)  # open3d
ldconfig -p 2>/dev/null | grep -q 'libgomp.so.1' || need_apt+=(libgomp1)
command -v java >/dev/null 2>&1 || need_apt+=(openjdk-17-jre-headless)  # gcloud emulators
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)  # the results page test (headless, software GL)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)  # splat-transform, below
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
  else
    echo "bootstrap: please install: ${need_apt[*]}" >&2
    exit 1
  fi
fi

python=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip wheel setuptools
"$venv/bin/python" -m pip install -q -c constraints.txt -e ".[jobs,emulator,dev,cli]"

# --- checkov (tests/terraform) ------------------------------------------------------------------
# checkov pins many packages of its own, so it lives in its own venv, not in $venv.
checkov_venv=.venv-checkov
checkov_version=3.3.30
if ! "$checkov_venv/bin/checkov" --version 2>/dev/null | grep -qx "$checkov_version"; then
  [ -x "$checkov_venv/bin/python" ] || "$python" -m venv "$checkov_venv"
  "$checkov_venv/bin/python" -m pip install -q --upgrade pip
  "$checkov_venv/bin/python" -m pip install -q -c constraints-checkov.txt "checkov==$checkov_version"
fi
# --- end checkov ---------------------------------------------------------------------------------

# --- provider schemas (tests/terraform/provider_schema.py) ------------------------------------------
# The cdktf provider wheels carry the Terraform providers' schemas; the tests read them offline.
# Downloaded only (never installed: they would pull in the cdktf/jsii runtime).
"$venv/bin/python" -m pip download -q --no-deps -d .cache/provider-schema \
  $("$venv/bin/python" tests/terraform/provider_schema.py)
# --- end provider schemas ------------------------------------------------------------------------

# --- job image wheels (tests/image) ----------------------------------------------------------------
# The GPU builds the job image swaps in (batch_jobs/image_requirements.py): downloaded only, so the
# tests can read their shared libraries' DT_NEEDED.
"$venv/bin/python" -m pip download -q --no-deps -d .cache/image-wheels \
  $("$venv/bin/python" batch_jobs/image_requirements.py --gpu-wheels)
# --- end job image wheels --------------------------------------------------------------------------

# --- splat-transform (tests/batch_jobs/test_splat_interop.py) -----------------------------------------
# A splat tool we did not write reads our PLY and SPZ outputs in the tests: npm's
# @playcanvas/splat-transform, pinned, installed under .cache (never globally). It declares
# node >= 22, but what the test runs (its PLY and SPZ readers, its CSV writer) works on Debian's
# node (18 in bookworm, 20 in trixie; checked with 18.20.4 and 20.20.2). No install scripts: the
# only one (webgpu's) does something on macOS alone, and its prebuilt Linux module ships in the
# package.
splat_transform_version=3.7.0
splat_transform_prefix=.cache/splat-transform
if [ "$(node -p "require('./$splat_transform_prefix/node_modules/@playcanvas/splat-transform/package.json').version" \
      2>/dev/null)" != "$splat_transform_version" ]; then
  npm install --prefix "$splat_transform_prefix" --save-exact --ignore-scripts --no-audit --no-fund \
    --loglevel=error "@playcanvas/splat-transform@$splat_transform_version"
fi
# --- end splat-transform ------------------------------------------------------------------------------

echo "bootstrap: ready ($venv)"

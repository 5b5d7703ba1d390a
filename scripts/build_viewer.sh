#!/usr/bin/env bash
# Rebuilds functions/viewer/viewer.bundle.js: three.js, Spark (3D Gaussian splats) and three's
# GLTFLoader and OrbitControls as one ES module that the results page loads from the api (no CDN
# at run time). Needs node/npm (the npm registry); versions pinned here.
set -euo pipefail
THREE_VERSION=0.187.0
SPARK_VERSION=2.2.0
ESBUILD_VERSION=0.25.9
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
npm init -y >/dev/null
npm install --no-audit --no-fund --silent "three@$THREE_VERSION" "@sparkjsdev/spark@$SPARK_VERSION" \
  "esbuild@$ESBUILD_VERSION"
cat > entry.js <<'JS'
export * as THREE from "three";
export { SparkRenderer, SplatMesh } from "@sparkjsdev/spark";
export { GLTFLoader } from "three/examples/jsm/loaders/GLTFLoader.js";
export { OrbitControls } from "three/examples/jsm/controls/OrbitControls.js";
JS
npx esbuild entry.js --bundle --format=esm --minify --legal-comments=eof --log-level=warning \
  --outfile="$repo/functions/viewer/viewer.bundle.js"
{
  echo "functions/viewer/viewer.bundle.js bundles three@$THREE_VERSION and @sparkjsdev/spark@$SPARK_VERSION."
  echo
  echo "== three.js =="; cat node_modules/three/LICENSE
  echo
  echo "== Spark =="; cat node_modules/@sparkjsdev/spark/LICENSE
} > "$repo/functions/viewer/LICENSES.txt"
echo "wrote $repo/functions/viewer/viewer.bundle.js ($(wc -c < "$repo/functions/viewer/viewer.bundle.js") bytes)"

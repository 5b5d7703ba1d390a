// The results page: live stage progress (polling the status), then the preview image, the splat
// in Spark's WebGL renderer, the mesh (GLB) and the metrics. While the splat trains, the viewer
// shows the training's latest snapshot and swaps in each newer one, then the final splat. The
// callback token comes from the page's own URL (?token=) and goes to the api in the
// token header only (core/api.py's, named by the page: data-token-header), and in the live
// preview image's URL.
import { GLTFLoader, OrbitControls, SparkRenderer, SplatMesh, THREE } from "./viewer.bundle.js";

const TERMINAL = new Set(["COMPLETED", "FAILED", "CANCELLED", "DELETED"]);
const POLL_MS = 2000;
const requestId = document.body.dataset.requestId;
const tokenHeader = document.body.dataset.tokenHeader;
const params = new URLSearchParams(location.search);
const token = params.get("token") || params.get("callback_token") || "";
const api = new URL("../", location.href); // the api's root, whatever path it is served under
const $ = (id) => document.getElementById(id);
// For tests and the curious: `latestSplats` counts the training snapshots loaded, `shown` says
// which splat is on show ("latest" or "final"), `latestSplatStep` the step of the snapshot.
const state = { viewer: "loading", splats: 0, mesh: false, status: null, livePreviews: 0, latestSplats: 0,
  latestSplatStep: null, shown: null };
window.splatpipe = state;

function setViewer(value, note) {
  state.viewer = value;
  document.body.dataset.viewer = value;
  $("viewer-status").textContent = note || "";
  $("viewer-status").hidden = !note;
}

async function call(path) {
  const resp = await fetch(new URL(path, api), { headers: { [tokenHeader]: token }, cache: "no-store" });
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.error ? `${body.error.code}: ${body.error.message}` : `HTTP ${resp.status}`);
  return body;
}

function seconds(a, b) {
  if (!a || !b) return null;
  return (Date.parse(b) - Date.parse(a)) / 1000;
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function renderStatus(st) {
  $("state").textContent = st.state;
  $("state").className = `state ${st.state}`;
  const body = $("stages").tBodies[0];
  body.replaceChildren();
  for (const name of st.stages_requested) {
    const s = st.stages[name] || {};
    const row = body.insertRow();
    row.className = s.state || "PENDING";
    cell(row, name);
    const main = cell(row, s.state || "PENDING");
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${Math.round(100 * (st.progress[name] || 0))}%`;
    bar.append(fill);
    main.append(bar);
    if (s.message) {
      const msg = document.createElement("div");
      msg.className = "msg";
      msg.textContent = s.message;
      main.append(msg);
    }
    const t = seconds(s.started_at, s.finished_at);
    cell(row, t === null ? "" : `${t.toFixed(0)} s`, "num");
  }
  $("error").hidden = !st.error;
  if (st.error) $("error").textContent = `[${st.error.stage || "-"}] ${st.error.code}: ${st.error.message}`;
  const warnings = st.warnings || [];
  $("warnings").hidden = warnings.length === 0;
  $("warnings").textContent = warnings.map((w) => `[${w.stage}] ${w.code}: ${w.message}`).join("\n");
  renderMetrics(st);
  renderLivePreview(st);
}

// While the splat trains, its stage rewrites a small render every few hundred steps.
let livePreviewAt = null;
function renderLivePreview(st) {
  const at = (st.stages.splat || {}).live_preview_at;
  if (!at || at === livePreviewAt || TERMINAL.has(st.state)) return;
  livePreviewAt = at;
  const url = new URL(`requests/${requestId}/live-preview`, api);
  url.searchParams.set("callback_token", token);
  url.searchParams.set("at", at);
  $("preview").src = url.href;
  $("preview").hidden = false;
  $("no-preview").textContent = `live: the training at ${new Date(at).toLocaleTimeString()}`;
  $("no-preview").hidden = false;
  state.livePreviews += 1;
}

function fmt(v) {
  if (typeof v === "number") return Number.isInteger(v) ? v.toLocaleString("en") : String(Number(v.toPrecision(4)));
  return String(v);
}

// The figures a reader looks for first; every other scalar a stage reported is under "all".
const HEADLINE = [
  ["sfm", "registered_images", "registered images"], ["sfm", "registered_fraction", "registered fraction"],
  ["sfm", "mean_reprojection_error_px", "reprojection error (px)"], ["splat", "heldout_psnr", "held-out PSNR (dB)"],
  ["splat", "heldout_ssim", "held-out SSIM"], ["splat", "gaussians", "Gaussians"],
  ["splat", "steps_per_s", "training steps/s"], ["mesh", "vertices", "mesh vertices"], ["mesh", "faces", "mesh faces"],
];

function metricRow(body, key, label, value) {
  const row = body.insertRow();
  row.dataset.metric = key;
  cell(row, label);
  cell(row, fmt(value), "num");
}

// The server's estimate (`cost`, core/pricing.py): each stage's machine time at its price table's rate.
function costRows(cost) {
  const priced = Object.entries((cost || {}).stages || {}).filter(([, c]) => c.usd !== null && c.usd !== undefined);
  if (!priced.length) return [];
  const usd = (v) => `$${v.toFixed(4)}`;
  const prices = cost.prices || {};
  return [...priced.map(([name, c]) => [`cost.${name}`, `${name} cost (est.)`, usd(c.usd)]),
    ["cost.total", `estimated cost (${prices.region} prices of ${prices.as_of})`, usd(cost.estimated_usd)]];
}

function renderMetrics(st) {
  const metrics = st.metrics || {};
  const body = $("metrics").tBodies[0];
  const all = $("all-metrics").tBodies[0];
  const rows = [];
  for (const [stage, key, label] of HEADLINE) {
    const v = (metrics[stage] || {})[key];
    if (v !== undefined && v !== null) rows.push([`${stage}.${key}`, label, v]);
  }
  for (const name of st.stages_requested) {
    const s = st.stages[name] || {};
    const t = seconds(s.started_at, s.finished_at);
    if (t !== null) rows.push([`${name}.seconds`, `${name} (s)`, t]);
  }
  rows.push(...costRows(st.cost));
  if (!rows.length) return;
  body.replaceChildren();
  for (const [key, label, v] of rows) metricRow(body, key, label, v);
  all.replaceChildren();
  for (const [stage, values] of Object.entries(metrics)) {
    for (const [k, v] of Object.entries(values || {})) metricRow(all, `all:${stage}.${k}`, `${stage}.${k}`, v);
  }
  $("all-metrics-box").hidden = !all.rows.length;
}

// --- the 3D view -------------------------------------------------------------------------------

const canvas = $("canvas");
const renderer = new THREE.WebGLRenderer({ canvas, antialias: false });
renderer.setPixelRatio(Math.min(window.devicePixelRatio, 2));
const scene = new THREE.Scene();
scene.background = new THREE.Color(0x000000);
const camera = new THREE.PerspectiveCamera(50, 1, 0.01, 1000);
const controls = new OrbitControls(camera, canvas);
scene.add(new SparkRenderer({ renderer }));
scene.add(new THREE.HemisphereLight(0xffffff, 0x404040, 2.0));
const sun = new THREE.DirectionalLight(0xffffff, 1.5);
sun.position.set(1, 2, 3);
scene.add(sun);
let splat = null; // the splat on show: a training snapshot, then the final one
let mesh = null;
let frames = 0;

function resize() {
  const { clientWidth: w, clientHeight: h } = canvas;
  if (canvas.width !== Math.floor(w * renderer.getPixelRatio()) || canvas.height !== Math.floor(h * renderer.getPixelRatio())) {
    renderer.setSize(w, h, false);
    camera.aspect = w / Math.max(1, h);
    camera.updateProjectionMatrix();
  }
}

renderer.setAnimationLoop(() => {
  resize();
  controls.update();
  renderer.render(scene, camera);
  if (splat && state.viewer === "rendering" && ++frames > 10) setViewer("ready");
});

// Frames: the SfM world is COLMAP's (y down, z forward), and so are the PLY and the GLB; the SPZ
// is stored y up, z back (x kept, y and z negated). With the training cameras of
// sfm/transforms.json the view is set in the SfM world, so the SPZ is turned back into it; without
// them everything is shown y up and the view is fitted to the bounding box.
let inSfmWorld = false;
function place(object, storedYUp) {
  if (storedYUp === inSfmWorld) object.quaternion.set(1, 0, 0, 0); // 180 degrees about x
}

// sfm/transforms.json: camera-to-world matrices in the OpenGL convention (three.js's own) in the
// splat's world frame: start from the middle training view, the one the preview shows.
function fromTransforms(doc, box) {
  const frames = doc.frames || [];
  if (!frames.length) return false;
  const f = [...frames].sort((a, b) => a.file_path.localeCompare(b.file_path))[Math.floor(frames.length / 2)];
  const m = new THREE.Matrix4().fromArray(f.transform_matrix.flat()).transpose();
  m.decompose(camera.position, camera.quaternion, new THREE.Vector3());
  camera.up.set(0, 1, 0).applyQuaternion(camera.quaternion);
  if (doc.camera_angle_y) camera.fov = (doc.camera_angle_y * 180) / Math.PI;
  const center = box.getCenter(new THREE.Vector3());
  const size = box.getSize(new THREE.Vector3()).length() || 1;
  const forward = new THREE.Vector3(0, 0, -1).applyQuaternion(camera.quaternion);
  const dist = Math.max(size * 0.05, center.clone().sub(camera.position).dot(forward));
  camera.near = size / 1000;
  camera.far = size * 100;
  camera.updateProjectionMatrix();
  controls.target.copy(camera.position).addScaledVector(forward, dist);
  controls.update();
  return true;
}

function frame(box) {
  const center = box.getCenter(new THREE.Vector3());
  const size = box.getSize(new THREE.Vector3()).length() || 1;
  camera.near = size / 1000;
  camera.far = size * 100;
  camera.position.copy(center).add(new THREE.Vector3(0, size * 0.15, size * 0.9));
  camera.updateProjectionMatrix();
  controls.target.copy(center);
  controls.update();
}

async function bytes(url) {
  const resp = await fetch(url, { referrerPolicy: "no-referrer" });
  if (!resp.ok) throw new Error(`HTTP ${resp.status} for ${url.split("?")[0]}`);
  return new Uint8Array(await resp.arrayBuffer());
}

// Put a decoded splat on show in place of the one there (disposed). A training snapshot is
// dropped if the final splat came first; the view is framed for the first splat shown and for the
// final one (whose training cameras may set it), and left where the user put it for snapshots.
async function putSplat(next, storedYUp, final, transforms) {
  await next.initialized;
  if (!final && state.shown === "final") {
    next.dispose();
    return false;
  }
  const first = splat === null;
  if (final) inSfmWorld = Boolean(transforms && (transforms.frames || []).length);
  place(next, storedYUp);
  if (splat) {
    scene.remove(splat);
    splat.dispose();
  }
  splat = next;
  splat.visible = !$("show-mesh").classList.contains("on");
  scene.add(splat);
  splat.updateMatrixWorld(true);
  state.shown = final ? "final" : "latest";
  state.splats = splat.packedSplats ? splat.packedSplats.numSplats : 0;
  if (first || final) {
    const box = splat.getBoundingBox(true).applyMatrix4(splat.matrixWorld);
    if (!final || !transforms || !fromTransforms(transforms, box)) frame(box);
  }
  return true;
}

async function showSplat(file, transforms) {
  setViewer("loading", `loading the splat (${(file.size / 1e6).toFixed(1)} MB) …`);
  const fileType = file.path.endsWith(".spz") ? "spz" : "ply";
  const next = new SplatMesh({ fileBytes: await bytes(file.url), fileType, fileName: file.path });
  await putSplat(next, fileType === "spz", true, transforms);
  $("viewer-note").textContent = `${fmt(state.splats)} Gaussians · drag to orbit, scroll to zoom`;
  frames = 0;
  setViewer("rendering");
}

// While the splat trains, each checkpoint publishes a small SPZ of the current Gaussians (the
// status's stages.splat.latest_splat_step; GET requests/{id}/splat-latest): when the step changes
// the viewer loads it in place of the last one, until the final splat replaces it. A snapshot
// that does not load (rewritten meanwhile, the stage restarted) is tried again at the next poll.
let latestStep = null;
let latestLoad = null; // the snapshot load in flight
function renderLatestSplat(st) {
  const step = (st.stages.splat || {}).latest_splat_step;
  if (step === null || step === undefined || step === latestStep || latestLoad || state.shown === "final") {
    return latestLoad || Promise.resolve();
  }
  latestLoad = loadLatestSplat(step).finally(() => { latestLoad = null; });
  return latestLoad;
}

async function loadLatestSplat(step) {
  try {
    const resp = await fetch(new URL(`requests/${requestId}/splat-latest`, api),
      { headers: { [tokenHeader]: token }, cache: "no-store" });
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    const data = new Uint8Array(await resp.arrayBuffer());
    if (!splat) setViewer("loading", `loading the training's splat at step ${fmt(step)} …`);
    const next = new SplatMesh({ fileBytes: data, fileType: "spz", fileName: "latest.spz" });
    if (await putSplat(next, true, false, null)) {
      latestStep = step;
      state.latestSplatStep = step;
      state.latestSplats += 1;
      $("viewer-note").textContent = `training: the splat at step ${fmt(step)} · ${fmt(state.splats)} Gaussians`
        + " · drag to orbit, scroll to zoom";
      if (!TERMINAL.has((state.status || {}).state)) setViewer("snapshot");
    }
  } catch (err) {
    $("viewer-note").textContent = `the training's snapshot at step ${fmt(step)} did not load (${err.message}); retrying`;
  }
}

// A request that ended without outputs (failed or cancelled while it trained): its last snapshot.
async function showLastSnapshot(st) {
  if (st.state !== "DELETED") {
    await renderLatestSplat(st); // the load in flight, if any
    await renderLatestSplat(st); // then the last step, if that one was older
  }
  if (state.shown !== "latest") {
    setViewer("none", `the request is ${st.state}`);
    return;
  }
  setViewer("snapshot");
  $("viewer-note").textContent = `the request is ${st.state}: the training's last snapshot, step `
    + `${fmt(state.latestSplatStep)} · drag to orbit, scroll to zoom`;
}

async function loadMesh(file) {
  const gltf = await new GLTFLoader().parseAsync((await bytes(file.url)).buffer, "");
  mesh = gltf.scene;
  // A fused surface has no reliable inside and outside: show both sides of every face.
  mesh.traverse((o) => { if (o.material) o.material.side = THREE.DoubleSide; });
  place(mesh, false);
  mesh.visible = false;
  scene.add(mesh);
  state.mesh = true;
  $("show-mesh").disabled = false;
}

function toggle(showMesh) {
  if (splat) splat.visible = !showMesh;
  if (mesh) mesh.visible = showMesh;
  $("show-mesh").classList.toggle("on", showMesh);
  $("show-splat").classList.toggle("on", !showMesh);
}
$("show-mesh").onclick = () => toggle(true);
$("show-splat").onclick = () => toggle(false);

async function showOutputs() {
  const manifest = await call(`requests/${requestId}/download`);
  const byName = Object.fromEntries(manifest.files.map((f) => [f.name, f]));
  const list = $("files");
  list.replaceChildren();
  for (const f of manifest.files) {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = f.url;
    a.rel = "noreferrer";
    a.textContent = f.path;
    li.append(a, ` (${fmt(f.size)} bytes)`);
    list.append(li);
  }
  if (byName.preview) {
    $("preview").src = byName.preview.url;
    $("preview").hidden = false;
    $("no-preview").hidden = true;  // the final render replaces the live one
  }
  const splatFile = byName.splat_spz || byName.splat_ply;
  let transforms = null;
  if (byName.transforms) {
    try {
      transforms = JSON.parse(new TextDecoder().decode(await bytes(byName.transforms.url)));
    } catch (err) {
      transforms = null; // the bounding box frames the view instead
    }
  }
  if (!splatFile) {
    setViewer("none", "this request has no splat");
  } else {
    try {
      await showSplat(splatFile, transforms);
    } catch (err) {
      setViewer("error", `the splat did not load: ${err.message}`);
    }
  }
  if (byName.mesh_glb) {
    loadMesh(byName.mesh_glb).catch((err) => { $("viewer-note").textContent += ` · mesh: ${err.message}`; });
  }
}

async function poll() {
  try {
    const st = await call(`status/${requestId}`);
    state.status = st;
    renderStatus(st);
    if (TERMINAL.has(st.state)) {
      // outputs.splat_latest is the training's snapshot, not one of the request's outputs.
      const outputs = Object.keys(st.outputs || {}).filter((name) => name !== "splat_latest");
      if (st.state === "COMPLETED" || outputs.length) await showOutputs();
      else await showLastSnapshot(st);
      return;
    }
    if (state.shown !== "latest") setViewer("waiting", `${st.state.toLowerCase()} · ${st.stage || "queued"} …`);
    renderLatestSplat(st); // not awaited: the status keeps coming while a snapshot loads
  } catch (err) {
    setViewer("waiting", `status unavailable (${err.message}); retrying`);
  }
  setTimeout(poll, POLL_MS);
}

if (!token) setViewer("error", "the page needs ?token=<callback token>");
else poll();

// The operator console's page: state and camera views over one websocket, actions over POST.
"use strict";
const TOKEN = document.querySelector('meta[name="console-token"]').content;
const stats = { frames: {}, latencies: [], state: null, connected: false, errors: [] };
window.consoleStats = stats;
let full = null;  // the camera shown at full resolution
const views = {};

function $(id) { return document.getElementById(id); }
function fmt(v, d = 2) {
  if (v === null || v === undefined) return "-";
  return typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(d)) : String(v);
}
function table(el, rows) {
  el.replaceChildren(...rows.map(([k, v, cls]) => {
    const tr = document.createElement("tr");
    const a = document.createElement("td"); a.textContent = k;
    const b = document.createElement("td"); b.textContent = v; if (cls) b.className = cls;
    tr.append(a, b); return tr;
  }));
}
function say(text) { $("message").textContent = text; }

async function post(path, body) {
  const r = await fetch(path, { method: "POST", headers: { "X-Console-Token": TOKEN,
    "Content-Type": "application/json" }, body: JSON.stringify(body || {}) });
  let d = {}; try { d = await r.json(); } catch (e) { /* not JSON */ }
  if (!r.ok) { stats.errors.push(d.error || d.message || r.status); }
  say(d.message || d.error || String(r.status));
  return d;
}

function view(cam) {
  if (views[cam]) return views[cam];
  const fig = document.createElement("figure"); fig.id = "view-" + cam;
  const img = document.createElement("img"); img.id = "cam-" + cam; img.alt = cam;
  const cap = document.createElement("figcaption"); cap.textContent = cam;
  fig.append(img, cap); $("cameras").append(fig);
  fig.addEventListener("click", () => {
    full = full === cam ? null : cam;
    for (const [c, v] of Object.entries(views)) v.fig.classList.toggle("full", c === full);
    if (ws && ws.readyState === 1) ws.send(JSON.stringify({ full }));
  });
  views[cam] = { fig, img, cap, url: null };
  return views[cam];
}

function onFrame(buf) {
  const n = new DataView(buf).getUint16(0);
  const head = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 2, n)));
  const v = view(head.camera);
  const url = URL.createObjectURL(new Blob([new Uint8Array(buf, 2 + n)], { type: "image/jpeg" }));
  v.img.onload = () => {
    stats.frames[head.camera] = (stats.frames[head.camera] || 0) + 1;
    stats.latencies.push(Date.now() / 1000 - head.stamp);
    if (stats.latencies.length > 2000) stats.latencies.shift();
    v.cap.textContent = `${head.camera} ${v.img.naturalWidth}x${v.img.naturalHeight}` +
      (head.full ? " (full)" : "") + ` #${head.seq}`;
    if (v.url) URL.revokeObjectURL(v.url);
    v.url = url;
  };
  v.img.src = url;
}

function render(s) {
  stats.state = s;
  const c = $("control"); c.textContent = s.control; c.className = "badge " + s.control;
  $("task").textContent = s.task || "-";
  const inp = $("instruction");
  if (document.activeElement !== inp) inp.value = s.instruction || "";
  $("timer").textContent = fmt(s.episode.elapsed, 1) + " s";
  $("episode-state").textContent = s.episode.active ? "running" : (s.episode.last_outcome || "idle");
  const pr = $("prompt");  // the rig's question (reset the scene; confirm or reject the classifier's success)
  pr.textContent = s.prompt || ""; pr.hidden = !s.prompt;
  const rc = s.classifier || {};
  if (rc.probability === null || rc.probability === undefined) $("reward").textContent = "-";
  else {
    $("reward").textContent = `${rc.probability.toFixed(2)}` +
      (rc.threshold === null ? "" : (rc.probability >= rc.threshold ? " >= " : " < ") + rc.threshold.toFixed(2)) +
      (rc.age > 2 ? ` (${rc.age.toFixed(0)} s old)` : "");
    $("reward-meter").value = rc.probability;
    if (rc.threshold !== null) $("reward-meter").optimum = rc.threshold;
  }
  const f = s.safety, a = s.arm;
  table($("arm"), [
    ["franka", `${s.franka.level}: ${s.franka.message}`, "lvl-" + s.franka.level],
    ["TCP position (m)", a.ee_pos ? a.ee_pos.map(x => x.toFixed(3)).join(", ") : "-"],
    ["gripper width (m)", fmt(a.gripper_width, 3)],
    ["clipped", fmt(f.clipped)], ["rejected", fmt(f.rejected)], ["ignored", fmt(f.ignored)],
    ["loop period p99 (ms)", fmt(f.period_p99_ms)],
  ]);
  const ss = s.session;
  table($("session"), [
    ["episodes", fmt(ss.episodes)], ["successes", fmt(ss.successes)], ["failures", fmt(ss.failures)],
    ["aborted", fmt(ss.aborted)], ["interventions / episode", fmt(ss.interventions_per_episode)],
    ["operator time (s)", fmt(ss.operator_time, 1)],
  ]);
  table($("nodes"), Object.entries(s.nodes).map(([k, v]) => [k, `${v.level}: ${v.message}`, "lvl-" + v.level]));
  for (const cam of Object.keys(s.cameras || {})) view(cam);
  renderReview(s.review || { enabled: false });
}

let shownReview = "";
function renderReview(r) {
  if (!r.enabled) { $("audit").textContent = "no episode store (start the console with store=...)"; return; }
  const a = r.audit;
  $("audit").textContent = `audited precision ${a.precision === null ? "unknown" : a.precision.toFixed(2)}` +
    ` (${a.confirmed} confirmed, ${a.rejected} rejected); false positives per 100 episodes ` +
    `${a.fp_per_100 === null ? "unknown" : a.fp_per_100.toFixed(1)}; reviewing ${(a.rate * 100).toFixed(0)} %` +
    ` of positives; ${r.episodes} episodes`;
  const key = JSON.stringify(r.pending.map(p => p.index));
  if (key === shownReview) return;
  shownReview = key;
  const cams = Object.keys(views);
  $("review").replaceChildren(...r.pending.map(p => {
    const d = document.createElement("div"); d.className = "item"; d.id = "review-" + p.index;
    for (const cam of cams.slice(0, 1)) {
      const img = document.createElement("img");
      img.src = `api/review/${p.index}/frame/${cam}?token=${encodeURIComponent(TOKEN)}`; d.append(img);
    }
    const t = document.createElement("span");
    t.textContent = `#${p.index} ${p.task || ""} (${p.source}, ${p.steps} steps)`;
    const ok = document.createElement("button"); ok.textContent = "confirm"; ok.className = "ok";
    ok.dataset.review = p.index; ok.dataset.verdict = "confirm";
    const bad = document.createElement("button"); bad.textContent = "reject"; bad.className = "bad";
    bad.dataset.review = p.index; bad.dataset.verdict = "reject";
    d.append(t, ok, bad); return d;
  }));
}

document.addEventListener("click", async (e) => {
  const b = e.target.closest("button"); if (!b) return;
  if (b.dataset.action) await post("api/action/" + b.dataset.action);
  else if (b.dataset.review) {
    await post("api/review/" + b.dataset.review, { verdict: b.dataset.verdict });
    b.closest(".item").remove(); shownReview = "";
  }
});
$("instruction-form").addEventListener("submit", (e) => {
  e.preventDefault(); post("api/instruction", { text: $("instruction").value });
});

const SVG = "http://www.w3.org/2000/svg";
function curve(name, pts) {
  const wrap = document.createElement("div");
  const label = document.createElement("div"); label.className = "curve-label";
  const last = pts.length ? pts[pts.length - 1] : null;
  label.textContent = `${name}: ${last ? fmt(last[1]) : "-"}` + (last ? ` at ${last[0]} env steps` : "");
  const svg = document.createElementNS(SVG, "svg"); svg.setAttribute("class", "curve"); svg.id = "curve-" + name;
  svg.setAttribute("viewBox", "0 0 100 100"); svg.setAttribute("preserveAspectRatio", "none");
  if (pts.length > 1) {
    const xs = pts.map(p => p[0]), ys = pts.map(p => p[1]);
    const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(0, ...ys), y1 = Math.max(1e-9, ...ys);
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", pts.map(([x, y]) =>
      `${(100 * (x - x0) / Math.max(x1 - x0, 1e-9)).toFixed(2)},${(100 - 100 * (y - y0) / (y1 - y0)).toFixed(2)}`
    ).join(" "));
    svg.append(line);
  }
  wrap.append(label, svg); return wrap;
}
async function loadCurves() {
  try {
    const r = await fetch("api/curves", { headers: { "X-Console-Token": TOKEN } });
    const d = await r.json();
    stats.curves = d;
    if (!d.enabled) return;
    $("learner").hidden = false;
    $("learner-info").textContent = d.error ? d.error : `${d.episodes} episodes (moving mean of 20)`;
    $("curves").replaceChildren(...Object.entries(d.curves).map(([k, v]) => curve(k, v)));
  } catch (e) { /* offline: the next round retries */ }
}
loadCurves();
setInterval(loadCurves, 10000);

let ws = null;
function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const path = location.pathname.replace(/[^/]*$/, "");
  ws = new WebSocket(`${proto}://${location.host}${path}ws?token=${encodeURIComponent(TOKEN)}`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => { stats.connected = true; $("link").textContent = "live"; $("link").className = "badge on";
    if (full) ws.send(JSON.stringify({ full })); };
  ws.onmessage = (m) => {
    if (typeof m.data === "string") { const d = JSON.parse(m.data); if (d.type === "state") render(d); }
    else onFrame(m.data);
  };
  ws.onclose = () => { stats.connected = false; $("link").textContent = "offline"; $("link").className = "badge off";
    setTimeout(connect, 1000); };
}
connect();

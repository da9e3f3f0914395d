// vcam-talker control page: polls /status once a second; every POST carries the token.
"use strict";
const TOKEN = document.querySelector('meta[name="vcam-token"]').content;
const $ = (id) => document.getElementById(id);
const HISTORY = 300;  // samples of 1 s: the chart's last 5 minutes
const history = [];
let muted = false;

async function post(url, body) {
  const init = {method: "POST", headers: {"X-VCam-Token": TOKEN}};
  if (body instanceof FormData) {
    init.body = body;  // the browser sets the multipart boundary
  } else {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body || {});
  }
  const r = await fetch(url, init);
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.error || `${r.status} ${r.statusText}`);
  return data;
}

const ms = (v) => (v === undefined || v === null ? "–" : `${Number(v).toFixed(1)} ms`);

function showStatus(s) {
  $("engine").textContent = s.engine;
  $("avatar-path").textContent = s.avatar.split("/").pop();
  $("avatar-path").title = s.avatar;
  $("fps").textContent = s.fps.toFixed(1);
  $("engine-ms").textContent = `p50 ${ms(s.engine_ms_p50)}, p95 ${ms(s.engine_ms_p95)}`;
  const lat = s.latency_ms;
  $("latency").textContent = lat ? `${lat.total.toFixed(0)} ms = capture ${lat.capture.toFixed(0)} + lookahead ` +
    `${lat.lookahead.toFixed(0)} + compute ${lat.compute.toFixed(0)} + buffering ${lat.buffering.toFixed(0)}`
    : `video delay ${ms(s.delay_ms)}`;
  $("audio-delay").textContent = "audio_delay_ms" in s ? ms(s.audio_delay_ms) : "no audio output";
  $("av-offset").textContent = "av_offset_ms" in s ? `${s.av_offset_ms >= 0 ? "+" : ""}${ms(s.av_offset_ms)}` : "–";
  $("repeats").textContent = `${s.frames_repeated} / ${s.windows_skipped}`;
  const db = s.input_level_db;
  $("level").value = Math.max(-80, db);
  $("level-db").textContent = db <= -100 ? "silence" : `${db.toFixed(0)} dBFS`;
  $("summary").textContent = `${s.engine} · ${s.fps.toFixed(1)} fps · up ${Math.round(s.uptime_s)} s`;
  showHealth(s);
  muted = !!s.muted;
  $("mute").setAttribute("aria-pressed", String(muted));
  $("mute").textContent = muted ? "Unmute animation" : "Mute animation";
  if (s.test_sync && !$("sync").disabled) showSync(s.test_sync);
}

function showHealth(s) {
  const ul = $("health");
  ul.replaceChildren();
  const add = (name, h) => {
    const li = document.createElement("li");
    const st = document.createElement("span");
    st.className = "state " + (h.state === "ok" ? "ok" : h.state === "reopening" ? "warn" : "bad");
    st.textContent = h.state;
    li.append(`${name} `, st);
    if (h.state !== "ok") li.append(` ${h.error || ""} (down ${h.down_s} s, retry in ${h.next_retry_s} s)`);
    if (h.outages) li.append(` · ${h.outages} outage${h.outages > 1 ? "s" : ""}`);
    ul.append(li);
  };
  if (s.input === "demo") add("input", {state: "ok", error: "demo loop"});
  for (const [name, h] of Object.entries(s.health || {})) add(name, h);
}

function showSync(r) {
  const el = $("sync-result");
  if (r.error && !(r.offsets_ms || []).length) {
    el.textContent = r.error;
  } else {
    const sign = r.median_ms >= 0 ? "+" : "";
    el.textContent = `${sign}${r.median_ms} ms (${r.offsets_ms.join(", ")}) ${r.ok ? "✓ in sync" : "✗ out of sync"}` +
      (r.error ? ` – ${r.error}` : "");
  }
  el.className = "note state " + (r.ok ? "ok" : "bad");
}

function drawChart() {
  const c = $("chart"), g = c.getContext("2d"), w = c.width, h = c.height, pad = 24;
  g.clearRect(0, 0, w, h);
  g.strokeStyle = "#ccd"; g.fillStyle = "#556"; g.font = "11px system-ui";
  g.strokeRect(pad, 4, w - 2 * pad, h - pad);
  if (history.length < 2) return;
  const fpsMax = Math.max(30, ...history.map((p) => p.fps));
  const latMax = Math.max(100, ...history.map((p) => p.lat || 0)) * 1.1;
  g.fillText(String(Math.round(fpsMax)), 2, 12);
  g.textAlign = "right"; g.fillText(String(Math.round(latMax)), w - 2, 12); g.textAlign = "left";
  g.fillText("fps", 2, h - pad);
  g.textAlign = "right"; g.fillText("ms", w - 2, h - pad); g.textAlign = "left";
  // the first minute fills the width; after it the span grows to 5 minutes
  const span = Math.max(60, history.length);
  g.fillText(span < 120 ? `last ${history.length} s` : `last ${Math.round(history.length / 60)} min`, pad, h - 6);
  const line = (key, max, color) => {
    g.strokeStyle = color; g.lineWidth = 1.5; g.beginPath();
    history.forEach((p, i) => {
      const x = pad + (w - 2 * pad) * (i + span - history.length) / (span - 1);
      const y = 4 + (h - pad - 4) * (1 - (p[key] || 0) / max);
      i ? g.lineTo(x, y) : g.moveTo(x, y);
    });
    g.stroke();
  };
  line("fps", fpsMax, "#27c");
  line("lat", latMax, "#d62");
}

async function poll() {
  try {
    const r = await fetch("/status", {cache: "no-store"});
    const s = await r.json();
    showStatus(s);
    history.push({fps: s.fps, lat: s.latency_ms ? s.latency_ms.total : s.delay_ms});
    if (history.length > HISTORY) history.shift();
    drawChart();
    $("conn").textContent = ""; $("conn").className = "state";
  } catch (e) {
    $("conn").textContent = "daemon unreachable"; $("conn").className = "state bad";
  }
  setTimeout(poll, 1000);
}

async function loadAvatars() {
  try {
    const r = await fetch("/api/avatars", {cache: "no-store"});
    const a = await r.json();
    const sel = $("avatar");
    sel.replaceChildren(...a.avatars.map((n) => new Option(n, n, false, n === a.current)));
    if (!a.avatars.includes(a.current)) sel.prepend(new Option(`(${a.current})`, "", true, true));
    $("avatar-note").textContent = a.avatars.length ? "" : `no pictures in ${a.folder}`;
  } catch (e) {
    $("avatar-note").textContent = `avatars: ${e.message}`;
  }
}

async function selectAvatar(name) {
  $("avatar-note").textContent = "switching…";
  try {
    await post("/api/avatar", {name});
    $("avatar-note").textContent = `${name}: preparing (a new photo takes a few seconds)`;
  } catch (e) {
    $("avatar-note").textContent = e.message;
  }
  loadAvatars();
}

$("avatar").addEventListener("change", (e) => { if (e.target.value) selectAvatar(e.target.value); });
$("upload").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  if (!file) return;
  const form = new FormData();
  form.append("photo", file);
  $("avatar-note").textContent = "uploading…";
  try {
    const {name} = await post("/api/avatars", form);
    await loadAvatars();
    await selectAvatar(name);
  } catch (err) {
    $("avatar-note").textContent = err.message;
  }
  e.target.value = "";
});
$("mute").addEventListener("click", async () => {
  try {
    const r = await post("/api/mute", {muted: !muted});
    muted = r.muted;
    $("mute").setAttribute("aria-pressed", String(muted));
    $("mute").textContent = muted ? "Unmute animation" : "Mute animation";
  } catch (e) {
    $("sync-result").textContent = e.message;
  }
});
$("sync").addEventListener("click", async () => {
  $("sync").disabled = true;
  $("sync-result").textContent = "watch the picture, listen to the mic…";
  $("sync-result").className = "note";
  try {
    showSync(await post("/api/test-sync"));
  } catch (e) {
    showSync({error: e.message, ok: false});
  }
  $("sync").disabled = false;
});

poll();
loadAvatars();

# ruff: noqa: E501  (the embedded HTML/JS keeps its natural line lengths)
"""The review page: one self-contained HTML document (inline CSS and JS, no external
network). It holds no data itself: its script asks for the token (kept in sessionStorage)
and reads the JSON API with it (arrival problems such as burned-in annotation, the content
check's choice and each candidate model's status are shown with the results); overlays (PNG key frames, a WebM video of every frame) are
fetched with the token and shown as blobs."""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'self'; img-src 'self' blob:;
 media-src 'self' blob:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'">
<title>cinelab serve: review</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em}
th{background:#f3f3f3}tr.sel{background:#eef5ff}tr[data-uid]{cursor:pointer}
.done{color:#080}.failed{color:#b00}.queued,.receiving,.running{color:#a60}
.flag{color:#b00;font-weight:bold}img,video{max-width:100%;border:1px solid #ccc}
section{margin-bottom:1.5em}
</style></head><body>
<h1>cinelab serve</h1>
<section><label>Token <input id="token" type="password" size="40"></label>
<button id="save-token">Use token</button> <span id="auth-status"></span></section>
<section><h2>Upload a study</h2>
<form id="upload-form"><input id="files" type="file" multiple>
<select id="modality"><option value="">modality from the files</option><option>US</option>
<option>MR</option><option>CR</option><option>DX</option></select>
<button type="submit">Upload</button> <span id="upload-status"></span></form></section>
<section><h2>Studies</h2><button id="refresh">Refresh</button>
<table id="studies"><thead><tr><th>study</th><th>status</th><th>modality</th><th>instances</th>
<th>received</th><th>latency (s)</th><th>reason</th></tr></thead><tbody></tbody></table></section>
<section id="detail"></section>
<script>
"use strict";
const $ = (s) => document.querySelector(s);
const token = () => sessionStorage.getItem("cinelab-token") || "";
const auth = () => ({headers: {"Authorization": "Bearer " + token()}});
const text = (v) => v === null || v === undefined ? "" : String(v);
function cell(row, value, cls) {
  const td = document.createElement("td"); td.textContent = text(value);
  if (cls) td.className = cls; row.appendChild(td); return td;
}
async function api(path, options) {
  const r = await fetch(path, Object.assign(auth(), options || {}));
  $("#auth-status").textContent = r.status === 401 ? "token refused" : "";
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r;
}
async function loadStudies() {
  const studies = await (await api("/api/studies")).json();
  const body = $("#studies tbody"); body.replaceChildren();
  for (const s of studies) {
    const tr = document.createElement("tr"); tr.dataset.uid = s.uid;
    cell(tr, s.uid); cell(tr, s.status, s.status); cell(tr, s.meta.modality);
    cell(tr, s.n_instances); cell(tr, new Date(s.created * 1000).toLocaleString());
    cell(tr, s.latency_s === null ? "" : s.latency_s.toFixed(1)); cell(tr, s.reason);
    tr.addEventListener("click", () => showStudy(s.uid)); body.appendChild(tr);
  }
}
function isMeasure(key) {
  return !["sample_id", "patient_id"].includes(key);
}
function fmt(v) { return typeof v === "number" ? (Number.isInteger(v) ? v : v.toFixed(2)) : text(v); }
async function showStudy(uid) {
  document.querySelectorAll("#studies tr").forEach(r => r.classList.toggle("sel", r.dataset.uid === uid));
  const study = await (await api("/api/studies/" + encodeURIComponent(uid))).json();
  const d = $("#detail"); d.replaceChildren();
  const h = document.createElement("h2"); h.textContent = "Study " + uid + " (" + study.status + ")";
  d.appendChild(h);
  for (const problem of (study.meta.problems || [])) { const p = document.createElement("p"); p.className = "flag problem"; p.textContent = "problem: " + problem; d.appendChild(p); }
  const results = study.results;
  if (!results || study.status === "failed") { const p = document.createElement("p"); p.className = study.status === "failed" ? "failed reason" : ""; p.textContent = text(study.reason) || "no results yet"; d.appendChild(p); if (!results) return; }
  if (results.version > 1) { const p = document.createElement("p"); p.textContent = "version " + results.version + " (re-opened by instances that arrived later)"; d.appendChild(p); }
  if (results.selection) { const p = document.createElement("p"); p.id = "selection"; p.textContent = "content check: chose " + results.selection.chosen.join(", ") + " (" + results.selection.reason + ")"; d.appendChild(p); }
  for (const [model, out] of Object.entries(results.models)) {
    const h3 = document.createElement("h3"); h3.textContent = model + " (" + text(out.pipeline) + ")" + (out.status ? ": " + out.status : ""); d.appendChild(h3);
    if (out.status && out.status !== "chosen") { const p = document.createElement("p"); p.className = "flag model-status"; p.dataset.model = model; p.textContent = out.status + ": " + text(out.reason); d.appendChild(p); }
    const table = document.createElement("table"); table.className = "measurements";
    for (const row of out.predictions) {
      for (const [k, v] of Object.entries(row)) {
        if (!isMeasure(k) || k.endsWith("_lo") || k.endsWith("_hi") || v === null) continue;
        const tr = document.createElement("tr"); tr.dataset.key = k;
        cell(tr, k);
        const lo = row[k + "_lo"], hi = row[k + "_hi"];
        cell(tr, fmt(v) + (lo !== undefined && lo !== null ? " [" + fmt(lo) + ", " + fmt(hi) + "]" : ""));
        const flagged = (k.endsWith("flag") || k === "fallback") && v !== false && v !== 0 && v !== "" && v !== "false";
        if (flagged) tr.className = "flag";
        table.appendChild(tr);
      }
    }
    d.appendChild(table);
    for (const p of out.problems) { const e = document.createElement("p"); e.className = "flag"; e.textContent = "problem: " + text(p.error); d.appendChild(e); }
  }
  const links = document.createElement("ul"); links.id = "downloads";
  for (const f of results.files) {
    if (f.endsWith(".webm")) {
      const fig = document.createElement("figure"), cap = document.createElement("figcaption");
      const video = document.createElement("video"); video.className = "overlay-video"; video.title = f;
      video.controls = true; video.muted = true; video.autoplay = true; video.loop = true; video.playsInline = true;
      video.setAttribute("muted", ""); video.setAttribute("autoplay", ""); video.setAttribute("loop", "");
      const blob = await (await api("/api/studies/" + encodeURIComponent(uid) + "/files/" + encodeURIComponent(f))).blob();
      video.src = URL.createObjectURL(blob); cap.textContent = f + " (every frame, predicted outline)";
      fig.appendChild(video); fig.appendChild(cap); d.appendChild(fig);
      video.play().catch(() => {});  // muted: allowed without a gesture (autoplay may not fire on a created element)
      continue;
    }
    if (!f.endsWith(".png")) {
      const li = document.createElement("li"), a = document.createElement("a");
      a.textContent = f; a.href = "#";
      a.addEventListener("click", (e) => { e.preventDefault(); download(uid, f); });
      li.appendChild(a); links.appendChild(li); continue;
    }
    const fig = document.createElement("figure"), cap = document.createElement("figcaption");
    const img = document.createElement("img"); img.alt = f; img.className = "overlay";
    const blob = await (await api("/api/studies/" + encodeURIComponent(uid) + "/files/" + encodeURIComponent(f))).blob();
    img.src = URL.createObjectURL(blob); cap.textContent = f + " (key frames: end-diastole, then end-systole when found)";
    fig.appendChild(img); fig.appendChild(cap); d.appendChild(fig);
  }
  d.appendChild(links);
}
async function download(uid, f) {
  const blob = await (await api("/api/studies/" + encodeURIComponent(uid) + "/files/" + encodeURIComponent(f))).blob();
  const a = document.createElement("a"); a.href = URL.createObjectURL(blob); a.download = f; a.click();
}
$("#save-token").addEventListener("click", () => { sessionStorage.setItem("cinelab-token", $("#token").value); loadStudies().catch(e => $("#auth-status").textContent = e.message); });
$("#refresh").addEventListener("click", () => loadStudies().catch(e => $("#auth-status").textContent = e.message));
$("#upload-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const form = new FormData();
  for (const f of $("#files").files) form.append("files", f);
  if ($("#modality").value) form.append("modality", $("#modality").value);
  try {
    const r = await (await api("/api/studies", {method: "POST", body: form})).json();
    $("#upload-status").textContent = "queued: " + r.studies.join(", ");
    await loadStudies();
  } catch (err) { $("#upload-status").textContent = err.message; }
});
if (token()) loadStudies().catch(() => {});
setInterval(() => { if (token()) loadStudies().catch(() => {}); }, 3000);
</script></body></html>
"""


def review_page() -> str:
    """The review page's HTML."""
    return PAGE

// Sluice console: stream an answer, send feedback, upload files. Same origin only; CSRF token from the page.
"use strict";
const csrf = () => document.querySelector('meta[name="csrf-token"]').content;
const $ = (id) => document.getElementById(id);
const post = (url, body) => fetch(url, {
  method: "POST", credentials: "same-origin",
  headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf()}, body: JSON.stringify(body),
});

async function problem(res) {
  try { const body = await res.json(); return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail); }
  catch (e) { return `HTTP ${res.status}`; }
}

// Server-Sent Events from a fetch body: calls onEvent(name, data) for each complete event.
async function readEvents(res, onEvent) {
  const reader = res.body.getReader(), decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = buffer.indexOf("\n\n")) !== -1) {
      const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
      const name = (block.match(/^event: (.*)$/m) || [])[1], data = (block.match(/^data: (.*)$/m) || [])[1];
      if (name && data) onEvent(name, JSON.parse(data));
    }
  }
}

function showCitations(citations) {
  const list = $("citations"); list.replaceChildren();
  citations.forEach((c) => {
    const a = document.createElement("a");
    a.href = `/console/source/${encodeURIComponent(c.document_id)}?start=${c.span[0]}&end=${c.span[1]}`;
    a.textContent = `${c.document} (characters ${c.span[0]}–${c.span[1]}, score ${c.score.toFixed(2)})`;
    const li = document.createElement("li"); li.append(a); list.append(li);
  });
}

async function ask(event) {
  event.preventDefault();
  const body = {question: $("question").value};
  if ($("collection").value) body.collection = $("collection").value;
  $("answer").textContent = ""; $("ask-error").textContent = ""; $("citations").replaceChildren();
  $("feedback-status").textContent = "";
  try { if ($("filters").value.trim()) body.filters = JSON.parse($("filters").value); }
  catch (e) { $("ask-error").textContent = `Filters are not valid JSON: ${e.message}`; return; }
  const t0 = performance.now();
  let first = 0;
  $("timing").textContent = "waiting for the first token…";
  const res = await post("/console/ask/stream", body);
  if (!res.ok) { $("ask-error").textContent = await problem(res); $("timing").textContent = ""; return; }
  await readEvents(res, (name, data) => {
    if (name === "token") {
      if (!first) { first = performance.now(); $("timing").textContent = `first token after ${Math.round(first - t0)} ms`; }
      $("answer").textContent += data.text;
    } else if (name === "done") {
      $("answer").textContent = data.answer;
      const ttft = first ? Math.round(first - t0) : Math.round(performance.now() - t0);
      $("timing").textContent = `first token after ${ttft} ms · whole answer after ${Math.round(performance.now() - t0)} ms` +
        (data.cached ? " · from the answer cache" : "");
      showCitations(data.citations || []);
      $("feedback").dataset.answer = data.answer_id || data.task_id || "";
    } else if (name === "error") {
      $("ask-error").textContent = data.detail;
    }
  });
}

async function sendFeedback(rating) {
  const box = $("feedback"), body = {answer_id: box.dataset.answer, rating};
  if (!body.answer_id) { $("feedback-status").textContent = "Ask a question first."; return; }
  if ($("correction").value.trim()) body.correction = $("correction").value.trim();
  const res = await post("/console/feedback", body);
  const detail = res.ok ? "" : await problem(res);
  $("feedback-status").textContent = res.ok ? "Thank you: feedback recorded." : detail;
}

const base64 = (file) => new Promise((resolve, reject) => {
  const reader = new FileReader();
  reader.onload = () => resolve(reader.result.slice(reader.result.indexOf(",") + 1));
  reader.onerror = () => reject(reader.error);
  reader.readAsDataURL(file);
});

async function upload(files) {
  const status = $("upload-status");
  if (!files.length) return;
  status.textContent = `Reading ${files.length} file(s)…`;
  const body = {files: await Promise.all([...files].map(async (f) => ({name: f.name, content_base64: await base64(f)})))};
  status.textContent = "Uploading…";
  const res = await post("/console/upload", body);
  if (!res.ok) { status.textContent = `Upload refused: ${await problem(res)}`; return; }
  const job = await res.json();
  for (;;) {
    const poll = await fetch(`/console/jobs/${job.job_id}`, {credentials: "same-origin"});
    const state = await poll.json();
    status.textContent = `Ingest job ${job.job_id}: ${state.status}` + (state.progress ? ` (${state.progress})` : "");
    if (state.status === "succeeded") {  // the list below is server-rendered: reload it, and say what the job did
      sessionStorage.setItem("sluice-upload", `Ingest job ${job.job_id} succeeded: ${counts(state.result)}`);
      location.reload(); return;
    }
    if (state.status === "failed") { status.textContent += `: ${state.error}`; return; }
    await new Promise((r) => setTimeout(r, 500));
  }
}

const counts = (result) => Object.entries(result || {})
  .filter(([, v]) => typeof v === "number").map(([k, v]) => `${v} ${k}`).join(", ");

function dropZone(zone, input) {
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => { e.preventDefault(); zone.classList.remove("over"); upload(e.dataTransfer.files); });
  input.addEventListener("change", () => upload(input.files));
}

document.addEventListener("DOMContentLoaded", () => {
  if ($("ask-form")) $("ask-form").addEventListener("submit", ask);
  document.querySelectorAll("#feedback button[data-rating]").forEach((b) =>
    b.addEventListener("click", () => sendFeedback(b.dataset.rating)));
  if ($("drop")) dropZone($("drop"), $("files"));
  const done = sessionStorage.getItem("sluice-upload");
  if (done && $("upload-status")) { $("upload-status").textContent = done; sessionStorage.removeItem("sluice-upload"); }
});

// imgclf web page: pick a model, add images (drop, paste or choose), see each image's top 5,
// and (on servers that take feedback) say whether it was right or choose the right label.
// Plain JavaScript against the v1 REST API; no build step.
"use strict";

const TOP_K = 5;
const PARALLEL = 4;

const $ = (sel) => document.querySelector(sel);
const modelSelect = $("#model");
const results = $("#results");
const template = $("#card-template");
const items = []; // {file, card, url}
let models = [];
let queue = [];
let running = 0;

function fmtPct(score) {
  const pct = score * 100;
  return (pct >= 10 ? pct.toFixed(1) : pct.toFixed(2)) + "%";
}

function fmtBytes(n) {
  if (n < 1024) return n + " B";
  if (n < 1024 * 1024) return (n / 1024).toFixed(0) + " KB";
  return (n / 1024 / 1024).toFixed(1) + " MB";
}

function serverMs(response) {
  const timing = response.headers.get("Server-Timing") || "";
  const m = timing.match(/total;dur=([\d.]+)/);
  return m ? parseFloat(m[1]) : null;
}

async function refreshStatus() {
  const el = $("#status");
  try {
    const res = await fetch("/v2/health/ready", { cache: "no-store" });
    const ready = res.ok && (await res.json()).ready;
    el.textContent = ready ? "ready" : "warming up…";
    el.className = "status " + (ready ? "status-ok" : "status-wait");
    if (!models.length) await loadModels();
  } catch {
    el.textContent = "offline";
    el.className = "status status-bad";
  }
}

async function loadModels() {
  const res = await fetch("/v1/models", { cache: "no-store" });
  if (!res.ok) return;
  const data = await res.json();
  models = data.models;
  modelSelect.replaceChildren(...models.map((m) => new Option(`${m.name} (v${m.version})`, m.name)));
  if (data.default) modelSelect.value = data.default;
  modelSelect.disabled = models.length === 0;
  showModelInfo();
  fillLabels();
  pump();
}

function showModelInfo() {
  const m = models.find((x) => x.name === modelSelect.value);
  if (!m) return;
  const p = m.preprocess;
  const arch = (m.provenance && m.provenance.architecture) || "";
  $("#model-info").textContent =
    `${m.num_classes} classes · ${p.input_size}×${p.input_size} input` +
    (arch ? ` · ${arch}` : "") + ` · batches of up to ${m.batching.max_batch_size}`;
}

function newCard(file) {
  const card = template.content.firstElementChild.cloneNode(true);
  card.querySelector(".file-name").textContent = file.name || "pasted image";
  card.querySelector(".file-name").title = `${file.name} (${fmtBytes(file.size)})`;
  const img = card.querySelector(".thumb img");
  const url = URL.createObjectURL(file);
  img.src = url;
  img.alt = file.name;
  img.addEventListener("error", () => { img.replaceWith("no preview"); });
  results.append(card);
  const item = { file, card, url };
  wireFeedback(item);
  return item;
}

function render(item, predictions, ms, server) {
  const { card } = item;
  const list = card.querySelector(".predictions");
  list.replaceChildren(...predictions.map((p) => {
    const li = document.createElement("li");
    li.className = "pred";
    li.title = `${p.label} (class ${p.index})`;
    const bar = document.createElement("span");
    bar.className = "pred-bar";
    bar.style.width = Math.max(0.5, p.score * 100).toFixed(1) + "%";
    const row = document.createElement("span");
    row.className = "pred-row";
    const label = document.createElement("span");
    label.className = "pred-label";
    label.textContent = p.label;
    const score = document.createElement("span");
    score.className = "pred-score";
    score.textContent = fmtPct(p.score);
    row.append(label, score);
    li.append(bar, row);
    return li;
  }));
  card.querySelector(".latency").textContent =
    `${Math.round(ms)} ms` + (server !== null ? ` · server ${Math.round(server)} ms` : "");
  card.dataset.status = "done";
  showFeedback(item);
}

// -- feedback: "right", or "wrong? choose the right label" -----------------------------------
let feedbackEnabled = false;

async function loadFeedbackSettings() {
  try {
    const res = await fetch("/v1/feedback/settings", { cache: "no-store" });
    feedbackEnabled = res.ok && (await res.json()).enabled;
  } catch { feedbackEnabled = false; }
  $("#review-link").hidden = !feedbackEnabled;
}

function fillLabels() {
  const m = models.find((x) => x.name === modelSelect.value);
  $("#labels").replaceChildren(...(m ? m.labels : []).map((l) => new Option(l)));
}

function showFeedback(item) {
  const box = item.card.querySelector(".feedback");
  box.hidden = !feedbackEnabled || !item.top;
  item.card.querySelector(".fb-status").textContent = "";
  delete item.card.dataset.feedback;
  item.card.querySelector(".fb-label").value = "";
}

function feedbackStatus(item, text, state) {
  item.card.querySelector(".fb-status").textContent = text;
  item.card.dataset.feedback = state;
}

async function postFeedback(item, body, asForm) {
  const url = `/v1/models/${encodeURIComponent(item.model)}/feedback`;
  if (asForm) {
    const form = new FormData();
    form.append("file", item.file, item.file.name || "image");
    for (const [k, v] of Object.entries(body)) if (v !== null && v !== undefined) form.append(k, String(v));
    return fetch(url, { method: "POST", body: form });
  }
  return fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

async function sendFeedback(item, label) {
  const m = models.find((x) => x.name === item.model);
  if (!m || !m.labels.includes(label)) {
    feedbackStatus(item, `"${label}" is not one of this model's labels: pick one from the list`, "error");
    return;
  }
  const body = { label, version: item.version, predicted_label: item.top.label, predicted_score: item.top.score };
  feedbackStatus(item, "sending…", "sending");
  let res;
  try {
    if (item.predictionId) {
      res = await postFeedback(item, { ...body, prediction_id: item.predictionId }, false);
      if (res.status === 404) {
        const err = await res.clone().json().catch(() => null);
        // The server no longer keeps the upload: send the image itself.
        if (err && err.error && err.error.code === "prediction_not_found") res = await postFeedback(item, body, true);
      }
    } else {
      res = await postFeedback(item, body, true);
    }
  } catch (err) {
    feedbackStatus(item, "the server did not answer: " + err.message, "error");
    return;
  }
  const data = await res.json().catch(() => null);
  if (!res.ok) {
    const message = data && data.error ? data.error.message : res.statusText;
    feedbackStatus(item, `not sent: ${message} (HTTP ${res.status})`, "error");
    return;
  }
  const what = label === item.top.label ? "Thanks: confirmed" : `Thanks: correction to "${label}" received`;
  feedbackStatus(item, `${what} (#${data.id}, pending review)`, "sent");
}

function wireFeedback(item) {
  const card = item.card;
  card.querySelector(".fb-right").addEventListener("click", () => sendFeedback(item, item.top.label));
  card.querySelector(".fb-wrong").addEventListener("submit", (e) => {
    e.preventDefault();
    const label = card.querySelector(".fb-label").value.trim();
    if (label) sendFeedback(item, label);
  });
}

function fail(item, message, status) {
  item.card.querySelector(".predictions").replaceChildren();
  item.card.querySelector(".error").textContent = status ? `${message} (HTTP ${status})` : message;
  item.card.querySelector(".latency").textContent = "";
  item.card.dataset.status = "error";
}

async function classify(item) {
  const model = modelSelect.value;
  const form = new FormData();
  form.append("file", item.file, item.file.name || "image");
  const started = performance.now();
  let res;
  try {
    res = await fetch(`/v1/models/${encodeURIComponent(model)}/predict?top_k=${TOP_K}`, {
      method: "POST", body: form,
    });
  } catch (err) {
    fail(item, "the server did not answer: " + err.message);
    return;
  }
  const ms = performance.now() - started;
  let body = null;
  try { body = await res.json(); } catch { /* not JSON: reported below */ }
  if (!res.ok) {
    const message = body && body.error ? body.error.message : res.statusText || "request failed";
    fail(item, message, res.status);
    return;
  }
  item.model = body.model;
  item.version = body.version;
  item.top = body.predictions[0][0];
  item.predictionId = body.prediction_ids ? body.prediction_ids[0] : null;
  render(item, body.predictions[0], ms, serverMs(res));
}

function pump() {
  if (!models.length) return;
  while (running < PARALLEL && queue.length) {
    const item = queue.shift();
    running += 1;
    classify(item).finally(() => { running -= 1; pump(); });
  }
}

function addFiles(files) {
  for (const file of files) {
    const item = newCard(file);
    items.push(item);
    queue.push(item);
  }
  $("#clear").disabled = items.length === 0;
  pump();
}

function rerunAll() {
  for (const item of items) {
    item.card.dataset.status = "pending";
    item.card.querySelector(".predictions").replaceChildren();
    item.card.querySelector(".latency").textContent = "";
    item.card.querySelector(".feedback").hidden = true;
    item.top = null;
  }
  queue = items.slice();
  pump();
}

// -- wiring --------------------------------------------------------------------------------
$("#files").addEventListener("change", (e) => { addFiles(e.target.files); e.target.value = ""; });
modelSelect.addEventListener("change", () => { showModelInfo(); fillLabels(); rerunAll(); });
$("#clear").addEventListener("click", () => {
  for (const item of items) URL.revokeObjectURL(item.url);
  items.length = 0;
  queue = [];
  results.replaceChildren();
  $("#clear").disabled = true;
});

const drop = $("#drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer && e.dataTransfer.files.length) addFiles(e.dataTransfer.files);
});
drop.addEventListener("keydown", (e) => {
  if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("#files").click(); }
});
document.addEventListener("paste", (e) => {
  const files = [...(e.clipboardData ? e.clipboardData.items : [])]
    .filter((it) => it.kind === "file")
    .map((it) => it.getAsFile())
    .filter(Boolean);
  if (files.length) { e.preventDefault(); addFiles(files); }
});

loadFeedbackSettings().finally(refreshStatus);
setInterval(refreshStatus, 5000);

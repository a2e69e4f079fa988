// imgclf review page: list feedback records, see each image, accept or reject it.
// Every call sends the API key, kept in this tab's sessionStorage only.
"use strict";

const PAGE = 50;
const KEY_STORE = "imgclf-api-key";
const $ = (sel) => document.querySelector(sel);
const list = $("#records");
const template = $("#record-template");
let offset = 0;
const urls = [];

function key() { return sessionStorage.getItem(KEY_STORE) || ""; }

function note(text, bad) {
  $("#note").textContent = text;
  $("#note").className = "review-note" + (bad ? " bad" : "");
}

async function api(path, options = {}) {
  const res = await fetch(path, { ...options, headers: { ...(options.headers || {}), "X-API-Key": key() } });
  if (!res.ok) {
    const body = await res.json().catch(() => null);
    throw new Error(body && body.error ? `${body.error.message} (HTTP ${res.status})` : `HTTP ${res.status}`);
  }
  return res;
}

async function thumbnail(card, record) {
  const img = card.querySelector(".thumb img");
  try {
    const blob = await (await api(`/v1/feedback/${record.id}/image`)).blob();
    const url = URL.createObjectURL(blob);
    urls.push(url);
    img.src = url;
    img.alt = record.label;
    img.addEventListener("error", () => { img.replaceWith("no preview"); });
  } catch {
    img.replaceWith("no image");
  }
}

function show(card, record) {
  card.dataset.status = record.status;
  card.dataset.id = String(record.id);
  card.querySelector(".file-name").textContent = `#${record.id} · ${record.status}`;
  card.querySelector(".meta").textContent =
    `${record.model} v${record.version} · ${record.created_at.slice(0, 19).replace("T", " ")} · from ` +
    (record.submitted_by ? `${record.submitted_by} (${record.client})` : record.client);
  const said = record.predicted_label
    ? `model said "${record.predicted_label}"` +
      (record.predicted_score !== null ? ` (${(record.predicted_score * 100).toFixed(1)}%)` : "")
    : "no prediction given";
  card.querySelector(".verdict").textContent =
    record.predicted_label === record.label ? `${said}; confirmed right` : `${said}; the person says "${record.label}"`;
  card.querySelector(".accept").disabled = record.status === "accepted";
  card.querySelector(".reject").disabled = record.status === "rejected";
}

function addRecord(record) {
  const card = template.content.firstElementChild.cloneNode(true);
  show(card, record);
  for (const [cls, action] of [["accept", "accept"], ["reject", "reject"]]) {
    card.querySelector("." + cls).addEventListener("click", async () => {
      try {
        const res = await api(`/v1/feedback/${record.id}/${action}`, { method: "POST" });
        show(card, await res.json());
        note(`#${record.id} ${action}ed.`);
      } catch (err) {
        note(`#${record.id}: ${err.message}`, true);
      }
    });
  }
  list.append(card);
  thumbnail(card, record);
}

async function load(reset) {
  if (!key()) { note("Enter the API key to review the corrections users sent."); return; }
  if (reset) {
    offset = 0;
    for (const u of urls.splice(0)) URL.revokeObjectURL(u);
    list.replaceChildren();
  }
  const params = new URLSearchParams({ limit: String(PAGE), offset: String(offset) });
  if ($("#status").value) params.set("status", $("#status").value);
  if ($("#model").value.trim()) params.set("model", $("#model").value.trim());
  try {
    const data = await (await api(`/v1/feedback?${params}`)).json();
    data.records.forEach(addRecord);
    offset += data.records.length;
    note(`${offset} of ${data.total} record(s).`);
    $("#more").hidden = offset >= data.total;
  } catch (err) {
    note(err.message, true);
  }
}

$("#key").value = key();
$("#key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(KEY_STORE, $("#key").value.trim());
  load(true);
});
$("#forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORE);
  $("#key").value = "";
  list.replaceChildren();
  note("Key forgotten.");
});
$("#more").addEventListener("click", () => load(false));
load(true);

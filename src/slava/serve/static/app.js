// The sLAVA page: one micrograph, its cropped preview, classification,
// measurements and a chat, all through the server's /v1/ API.
// Model output is only ever inserted as text (textContent), never as HTML.
"use strict";

const KEY_STORAGE = "slava.apiKey";
const $ = (id) => document.getElementById(id);

const state = {
  authRequired: true,
  image: null,      // the file as a data URL, sent with every chat request
  name: "",
  history: [],      // OpenAI messages after the first user turn's image
  busy: false,
};

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

function setStatus(text, kind = "") {
  const el = $("status");
  el.textContent = text;
  el.className = `status ${kind}`;
}

// fetch with the bearer key; throws an Error carrying the server's error message.
async function api(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (apiKey()) headers.Authorization = `Bearer ${apiKey()}`;
  const init = body === undefined ? { headers } : { method: "POST", headers, body: JSON.stringify(body) };
  const res = await fetch(path, init);
  let data = null;
  try { data = await res.json(); } catch (_) { /* non-JSON error page */ }
  if (!res.ok) {
    const message = (data && data.error && data.error.message) || `${res.status} ${res.statusText}`;
    const err = new Error(message);
    err.status = res.status;
    throw err;
  }
  return data;
}

function fmt(value, digits = 3) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return String(value);
  return Number(value.toPrecision(digits)).toString();
}

// -- connection and key -------------------------------------------------------

async function connect() {
  try {
    const health = await api("/healthz");
    state.authRequired = health.auth_required;
    $("key-form").hidden = !state.authRequired;
    $("api-key").value = apiKey();
  } catch (err) {
    setStatus(`server unreachable: ${err.message}`, "bad");
    return;
  }
  if (state.authRequired && !apiKey()) {
    setStatus("enter the API key", "warn");
    return;
  }
  try {
    const models = await api("/v1/models");
    $("model").textContent = models.data[0].id;
    const labels = await api("/v1/labels");
    if (!$("labels").value) $("labels").value = labels.labels.join(", ");
    setStatus("ready", "ok");
  } catch (err) {
    setStatus(err.status === 401 ? "API key rejected" : err.message, "bad");
  }
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
  connect();
});

// -- upload and preview -----------------------------------------------------

function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function fact(list, term, value) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  dd.textContent = value;
  list.append(dt, dd);
}

function showPreview(p) {
  $("preview-img").src = p.image;
  $("preview-name").textContent = state.name;
  const facts = $("preview-facts");
  facts.replaceChildren();
  fact(facts, "size", `${p.width} × ${p.height} px`);
  if (p.data_bar) {
    const [, y0, , y1] = p.data_bar;
    fact(facts, "data bar", `${y1 - y0} px cropped (of ${p.original_size[1]})`);
  } else {
    fact(facts, "data bar", "none found");
  }
  fact(facts, "pixel size", p.pixel_size_nm ? `${fmt(p.pixel_size_nm)} nm/px (${p.pixel_size_source})` : "unknown");
  if (p.pixel_size_nm) fact(facts, "field width", `${fmt(p.width * p.pixel_size_nm)} nm`);
  $("preview").hidden = false;
  $("drop").classList.add("compact");
}

async function loadFile(file) {
  if (!file) return;
  setStatus(`reading ${file.name}…`);
  try {
    state.image = await readAsDataURL(file);
    state.name = file.name;
    const preview = await api("/v1/preview", { image: state.image, name: file.name });
    showPreview(preview);
    resetChat();
    $("classify-btn").disabled = false;
    $("send").disabled = false;
    setStatus("ready", "ok");
    await Promise.all([classify(), measure()]);
  } catch (err) {
    state.image = null;
    $("classify-btn").disabled = true;
    $("send").disabled = true;
    setStatus(err.message, "bad");
  }
}

$("file").addEventListener("change", (event) => loadFile(event.target.files[0]));
const drop = $("drop");
["dragenter", "dragover"].forEach((type) => drop.addEventListener(type, (event) => {
  event.preventDefault();
  drop.classList.add("over");
}));
["dragleave", "drop"].forEach((type) => drop.addEventListener(type, () => drop.classList.remove("over")));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  loadFile(event.dataTransfer.files[0]);
});

// -- classification and measurements ---------------------------------------------

async function classify() {
  if (!state.image) return;
  const list = $("ranking");
  list.replaceChildren();
  try {
    const result = await api("/v1/classify", { image: state.image, labels: $("labels").value });
    for (const { label, probability } of result.ranked) {
      const li = document.createElement("li");
      const name = document.createElement("span");
      name.className = "label";
      name.textContent = label;
      const bar = document.createElement("span");
      bar.className = "bar";
      const fill = document.createElement("span");
      fill.style.width = `${(probability * 100).toFixed(1)}%`;
      bar.append(fill);
      const pct = document.createElement("span");
      pct.className = "pct";
      pct.textContent = `${(probability * 100).toFixed(1)} %`;
      li.append(name, bar, pct);
      list.append(li);
    }
  } catch (err) {
    const li = document.createElement("li");
    li.className = "error";
    li.textContent = err.message;
    list.append(li);
  }
}

$("classify-form").addEventListener("submit", (event) => {
  event.preventDefault();
  classify();
});

function measurementRows(m) {
  const u = m.unit;
  const rows = [["field", `${m.width_px} × ${m.height_px} px` +
    (m.pixel_size_nm ? ` · ${fmt(m.width_px * m.pixel_size_nm)} nm wide` : "")]];
  if (m.particles) {
    const p = m.particles;
    rows.push(["particles", `${p.count}` + (p.border_count ? ` (+${p.border_count} at the edge)` : "")]);
    if (p.mean_diameter !== null) rows.push(["mean diameter", `${fmt(p.mean_diameter)} ± ${fmt(p.std_diameter)} ${u}`]);
    rows.push(["coverage", `${fmt(p.coverage * 100)} %`]);
  }
  if (m.fibres && m.fibres.count) {
    const f = m.fibres;
    rows.push(["fibres", `${f.count}`]);
    if (f.mean_width !== null) rows.push(["mean fibre width", `${fmt(f.mean_width)} ${u}`]);
    if (f.orientation_deg !== null) rows.push(["orientation", `${fmt(f.orientation_deg)}° ± ${fmt(f.orientation_spread_deg)}°`]);
  }
  if (m.pores) {
    const p = m.pores;
    rows.push(["pore fraction", `${fmt(p.pore_fraction * 100)} %`]);
    if (p.mean_pore_size !== null) rows.push(["mean pore size", `${fmt(p.mean_pore_size)} ${u}`]);
    if (p.mean_ligament_width !== null) rows.push(["ligament width", `${fmt(p.mean_ligament_width)} ${u}`]);
  }
  if (m.periodicity && m.periodicity.pitch !== null && m.periodicity.strength >= 0.2) {
    rows.push(["pitch", `${fmt(m.periodicity.pitch)} ${u}`]);
  }
  if (m.texture) rows.push(["GLCM contrast", fmt(m.texture.glcm_contrast)]);
  return rows;
}

function instrumentText(inst) {
  const parts = [];
  if (inst.scale_bar_label) parts.push(`scale bar ${inst.scale_bar_label}`);
  if (inst.magnification) parts.push(`Mag ${inst.magnification}×`);
  if (inst.hv_kv !== null) parts.push(`HV ${inst.hv_kv} kV`);
  if (inst.wd_mm !== null) parts.push(`WD ${inst.wd_mm} mm`);
  if (inst.detector) parts.push(`detector ${inst.detector}`);
  if (inst.pixel_size_nm !== null) parts.push(`${inst.pixel_size_nm.toPrecision(4)} nm/px from the scale bar`);
  return parts.join(", ");
}

async function measure() {
  if (!state.image) return;
  const body = $("measurements").tBodies[0];
  body.replaceChildren();
  $("notes").replaceChildren();
  $("measure-empty").hidden = true;
  try {
    const method = $("particle-method").value;
    const result = await api("/v1/measure", { image: state.image, particle_method: method });
    for (const [name, value] of measurementRows(result.measurements)) {
      const row = body.insertRow();
      row.insertCell().textContent = name;
      row.insertCell().textContent = value;
    }
    for (const note of result.measurements.notes || []) {
      const li = document.createElement("li");
      li.textContent = note;
      $("notes").append(li);
    }
    const drawn = await api("/v1/overlay", { image: state.image, particle_method: method });
    $("overlay").src = drawn.image;
    $("overlay").hidden = false;
    const inst = drawn.instrument;
    $("instrument").textContent = inst ? (inst.problem || instrumentText(inst)) : "";
  } catch (err) {
    $("measure-empty").hidden = false;
    $("measure-empty").textContent = err.message;
  }
}

$("particle-method").addEventListener("change", () => measure());

// -- chat -------------------------------------------------------------------

function resetChat() {
  state.history = [];
  $("messages").replaceChildren();
}

function bubble(role, text, extra = "") {
  const div = document.createElement("div");
  div.className = `msg ${role} ${extra}`.trim();
  div.textContent = text;
  $("messages").append(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return div;
}

function chatMessages() {
  // The image travels in the first user message; later turns are plain text.
  return state.history.map((m, i) => (i === 0
    ? { role: "user", content: [{ type: "image_url", image_url: { url: state.image } }, { type: "text", text: m.content }] }
    : m));
}

async function ask(question) {
  question = question.trim();
  if (!question || !state.image || state.busy) return;
  state.busy = true;
  $("send").disabled = true;
  bubble("user", question);
  state.history.push({ role: "user", content: question });
  const pending = bubble("assistant", "thinking…", "pending");
  try {
    const result = await api("/v1/chat/completions", { messages: chatMessages(), max_tokens: 128 });
    const answer = result.choices[0].message.content;
    state.history.push({ role: "assistant", content: answer });
    pending.classList.remove("pending");
    pending.textContent = answer || "(empty answer)";
    if (result.slava && result.slava.source === "measurement") {
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = "measured";
      pending.append(tag);
    }
  } catch (err) {
    state.history.pop();
    pending.classList.replace("pending", "error");
    pending.textContent = err.message;
  } finally {
    state.busy = false;
    $("send").disabled = false;
  }
}

$("chat-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("question").value;
  $("question").value = "";
  ask(text);
});
$("question").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("chat-form").requestSubmit();
  }
});
for (const chip of document.querySelectorAll(".chip")) {
  chip.addEventListener("click", () => ask(chip.textContent));
}

connect();

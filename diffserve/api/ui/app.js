// The diffserve playground: plain JavaScript on the native job API (/v1/jobs, /v1/models) and, for the
// admin view, ModelsLab's system_details. The key stays in this browser (localStorage).
// Server data is shown as text only: elements are built with el() and filled through textContent, never
// innerHTML; the page is served with a Content-Security-Policy that runs no inline script (api/security.py).
"use strict";

const $ = (id) => document.getElementById(id);

// An element with properties (className, src, dataset...) and children (nodes, or strings shown as text).
function el(tag, props, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "dataset") Object.assign(e.dataset, v);
    else e[k] = v;
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

// A table row of cells; each cell is text or a node.
const row = (cells) => el("tr", null, ...cells.map((c) => el("td", null, c)));

// An output URL as a link or image source: http(s) or this origin only (never javascript: or data:text/html).
function safeUrl(url) {
  try {
    const u = new URL(String(url), location.href);
    return u.protocol === "http:" || u.protocol === "https:" ? u.href : "";
  } catch {
    return "";
  }
}
const state = { image: null, models: [], job: null, abort: null };

// ---------------------------------------------------------------- key and requests

$("key").value = localStorage.getItem("diffserve-key") || "";
function keyHelp() {
  $("key-help").hidden = Boolean($("key").value.trim());  // how to get a key, while none is set
}
keyHelp();
$("key").addEventListener("change", () => {
  localStorage.setItem("diffserve-key", $("key").value.trim());
  keyHelp();
  loadModels();
});

function headers(json) {
  const h = { Authorization: "Bearer " + $("key").value.trim() };
  if (json) h["Content-Type"] = "application/json";
  return h;
}

async function api(method, path, body) {
  const r = await fetch(path, { method, headers: headers(body !== undefined),
                                body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    const e = data.error || {};
    throw new Error(e.message || data.message || `HTTP ${r.status}`);
  }
  return data;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

// ---------------------------------------------------------------- views

for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => {
    for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t === tab);
    for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== "view-" + tab.dataset.view;
    if (tab.dataset.view === "history") loadHistory();
    if (tab.dataset.view === "admin") loadAdmin();
  });
}

// ---------------------------------------------------------------- the input image

function setImage(dataUrl) {
  state.image = dataUrl;
  $("input-preview").src = dataUrl;
  $("input-preview").hidden = false;
  $("image-url").value = "";
}

function readFile(file) {
  if (!file || !file.type.startsWith("image/")) return;
  const reader = new FileReader();
  reader.onload = () => setImage(reader.result);
  reader.readAsDataURL(file);
}

$("file").addEventListener("change", (e) => readFile(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); readFile(e.dataTransfer.files[0]); });
document.addEventListener("paste", (e) => {
  for (const item of e.clipboardData.items) if (item.type.startsWith("image/")) readFile(item.getAsFile());
});

// ---------------------------------------------------------------- models

async function loadModels() {
  if (!$("key").value.trim()) return;
  try {
    const list = await api("GET", "/v1/models");
    state.models = list.data;
    $("model").replaceChildren(...list.data.map((m) =>
      el("option", { value: m.id, selected: Boolean(m.default) }, `${m.id} (${m.family})`)));
    modelChanged();
  } catch (e) {
    showError(e.message);
  }
}

function modelChanged() {
  const m = state.models.find((x) => x.id === $("model").value);
  if (!m) return;
  const l = m.limits;
  $("model-info").textContent = `${m.family} · ${l.min_size}–${l.max_size} px (multiple of ${l.size_multiple}) · ` +
    `steps ${l.min_steps}–${l.max_steps} (default ${l.default_steps}) · guidance ${l.min_guidance}–${l.max_guidance} ` +
    `· up to ${l.max_samples} samples` + (m.description ? ` · ${m.description}` : "");
  // the form starts at the chosen model's own defaults (demo-sd: strength 0.3, 8 steps, guidance 1)
  for (const [id, value] of [["strength", l.default_strength], ["steps", l.default_steps],
                             ["guidance_scale", l.default_guidance]]) {
    $(id).value = value ?? "";
    $(id).placeholder = value === undefined || value === null ? "model default" : `default ${value}`;
  }
  $("scheduler").replaceChildren(el("option", { value: "" }, "model default"),
    ...m.schedulers.map((s) => el("option", { value: s }, s)));
}
$("model").addEventListener("change", modelChanged);

// ---------------------------------------------------------------- the request

function requestBody() {
  const body = { prompt: $("prompt").value, init_image: state.image || $("image-url").value.trim(),
                 model_id: $("model").value };
  const num = (id) => ($(id).value === "" ? undefined : Number($(id).value));
  const text = (id) => $(id).value.trim() || undefined;
  Object.assign(body, {
    negative_prompt: text("negative_prompt"), strength: num("strength"), steps: num("steps"),
    guidance_scale: num("guidance_scale"), seed: num("seed"), samples: num("samples"), scheduler: text("scheduler"),
    enhance_style: text("enhance_style"), vae: text("vae"), clip_skip: num("clip_skip"),
    enhance_prompt: $("enhance_prompt").checked, safety_checker: $("safety_checker").checked,
    tomesd: $("tomesd").checked,
  });
  const loras = text("lora_models");
  if (loras) body.lora_models = loras.split(",").map((s) => s.trim()).filter(Boolean);
  if (num("lora_strength") !== undefined) body.lora_strengths = [num("lora_strength")];
  for (const k of Object.keys(body)) if (body[k] === undefined) delete body[k];
  return body;
}

$("form").addEventListener("submit", async (e) => {
  e.preventDefault();
  showError("");
  $("result").hidden = true;
  const body = requestBody();
  if (!body.init_image) return showError("init_image: drop, paste or pick an image, or give its URL");
  $("submit").disabled = true;
  try {
    const job = await api("POST", "/v1/jobs", body);
    state.lastBody = body;
    follow(job);
  } catch (err) {
    showError(err.message);
    $("submit").disabled = false;
  }
});

// ---------------------------------------------------------------- following a job (server-sent events)

function showProgress(job) {
  $("run").hidden = false;
  $("run-status").textContent = job.status;
  const p = job.progress;
  $("bar").max = p.total || 1;
  $("bar").value = job.status === "succeeded" ? p.total || 1 : p.step;
  const pct = p.total ? Math.round((100 * (job.status === "succeeded" ? p.total : p.step)) / p.total) : 0;
  $("run-step").textContent = `${p.step}/${p.total} · ${pct}%` + (job.eta ? ` · ~${job.eta}s left` : "");
  $("bar").dataset.percent = pct;
}

async function follow(job) {
  state.job = job;
  showProgress(job);
  $("step-preview").hidden = true;
  $("cancel").disabled = false;
  state.abort = new AbortController();
  try {
    const r = await fetch(`/v1/jobs/${job.id}/events?previews=true`, { headers: headers(false), signal: state.abort.signal });
    if (!r.ok) throw new Error((await r.json()).error.message);
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const event = (block.match(/^event: (.*)$/m) || [])[1];
        const dataLine = (block.match(/^data: (.*)$/m) || [])[1];
        if (dataLine === undefined) continue; // a comment (": keep-alive") carries no event
        const data = JSON.parse(dataLine);
        if (event === "preview") {
          $("step-preview").src = data.image;
          $("step-preview").hidden = false;
        } else {
          state.job = data;
          showProgress(data);
        }
      }
    }
  } catch (err) {
    if (err.name !== "AbortError") showError(err.message);
  }
  finished(state.job);
}

function finished(job) {
  $("submit").disabled = false;
  $("cancel").disabled = true;
  if (job.status === "succeeded") return showResult(job);
  if (job.status === "failed" || job.status === "cancelled") showError(`${job.status}: ${job.error || ""}`);
}

$("cancel").addEventListener("click", async () => {
  if (!state.job) return;
  try {
    showProgress(await api("POST", `/v1/jobs/${state.job.id}/cancel`));
  } catch (err) {
    showError(err.message);
  }
});

// ---------------------------------------------------------------- results

function showResult(job) {
  $("result").hidden = false;
  $("gallery").replaceChildren(...job.outputs.map((url, i) => el("figure", null,
    el("img", { src: safeUrl(url), alt: `output ${i}` }),
    el("figcaption", null, el("a", { href: safeUrl(url), download: "" }, "download"),
      job.nsfw[i] ? " · flagged NSFW" : ""))));
  $("meta").replaceChildren(...Object.entries(job.meta)
    .filter(([, v]) => v !== null && v !== "" && !(Array.isArray(v) && !v.length))
    .map(([k, v]) => el("tr", null, el("th", null, k), el("td", null, String(v)))));
  renderCurl();
}

function renderCurl() {
  const b = { ...(state.lastBody || {}) };
  if (b.init_image && b.init_image.startsWith("data:")) b.init_image = "<base64 of your image>";
  const base = location.origin;
  const key = "$DIFFSERVE_API_KEY";
  const q = (obj) => `'${JSON.stringify(obj, null, 1).replace(/'/g, "'\\''")}'`;
  let cmd;
  switch ($("curl-dialect").value) {
    case "v6":
      cmd = `curl -s ${base}/api/v6/images/img2img -H 'Content-Type: application/json' -d ${q({
        key, model_id: b.model_id, prompt: b.prompt, negative_prompt: b.negative_prompt || null, init_image: b.init_image,
        samples: String(b.samples || 1), num_inference_steps: b.steps ? String(b.steps) : undefined,
        guidance_scale: b.guidance_scale, strength: b.strength, seed: b.seed ?? null, scheduler: b.scheduler })}`;
      break;
    case "realtime":
      cmd = `curl -s ${base}/api/v1/enterprise/realtime/img2img -H 'Content-Type: application/json' -d ${q({
        key, prompt: b.prompt, init_image: b.init_image, samples: String(b.samples || 1), strength: b.strength,
        seed: b.seed ?? null })}`;
      break;
    case "qolaba":
      cmd = `curl -s ${base}/getImagetoImage -H "Authorization: Bearer ${key}" -H 'Content-Type: application/json' -d ${q({
        app_id: "<a Qolaba app id>", image: b.init_image, prompt: b.prompt, batch: b.samples || 1, strength: b.strength,
        guidance_scale: b.guidance_scale })}`;
      break;
    default:
      cmd = `curl -s ${base}/v1/jobs -H "Authorization: Bearer ${key}" -H 'Content-Type: application/json' -d ${q(b)}`;
  }
  $("curl").textContent = cmd;
}
$("curl-dialect").addEventListener("change", renderCurl);
$("copy-curl").addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText($("curl").textContent));

// ---------------------------------------------------------------- history and admin

async function loadHistory() {
  try {
    const list = await api("GET", "/v1/jobs?limit=50");
    $("history").tBodies[0].replaceChildren(...list.data.map((j) => {
      const live = j.status === "queued" || j.status === "running";
      const cancel = live ? el("button", { type: "button" }, "Cancel") : "";
      if (live) {
        cancel.addEventListener("click", async () => {
          await api("POST", `/v1/jobs/${encodeURIComponent(j.id)}/cancel`);
          loadHistory();
        });
      }
      return row([j.id, j.status, `${j.progress.step}/${j.progress.total}`, j.dialect, j.model_id,
        el("span", { className: "prompt" }, String(j.meta.prompt || "")), j.outputs[0] ? el("img", { src: safeUrl(j.outputs[0]), alt: "" }) : "",
        cancel]);
    }));
  } catch (e) {
    showError(e.message);
  }
}
$("refresh-history").addEventListener("click", loadHistory);

async function loadAdmin() {
  $("admin-error").hidden = true;
  try {
    const d = await api("POST", "/api/v1/enterprise/system_details", { key: $("key").value.trim() });
    if (d.status === "error") throw new Error(d.message);
    $("queue").textContent = `Queue: ${d.queue_length} waiting, ${d.running} running · ${d.worker_count} worker(s) · ` +
      `models loaded: ${d.models_loaded.join(", ") || "none"}`;
    $("workers").tBodies[0].replaceChildren(...d.workers.map((w) => row([w.worker_id, w.state, w.device || "",
      w.dtype || "", w.labels.join(", "), w.models.join(", "), w.current_job ?? ""])));
  } catch (e) {
    $("admin-error").textContent = e.message;
    $("admin-error").hidden = false;
  }
  $("models").tBodies[0].replaceChildren(...state.models.map((m) => row([m.id, m.family,
    `${m.limits.min_size}–${m.limits.max_size}`, `${m.limits.min_steps}–${m.limits.max_steps}`, m.limits.max_samples,
    m.description || ""])));
}
$("refresh-admin").addEventListener("click", loadAdmin);

loadModels();

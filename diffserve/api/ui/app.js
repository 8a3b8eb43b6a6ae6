// The diffserve playground: plain JavaScript on the native job API (/v1/jobs, /v1/models) and, for the
// admin view, ModelsLab's system_details. The key stays in this browser (localStorage).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { image: null, models: [], job: null, abort: null };

// ---------------------------------------------------------------- key and requests

$("key").value = localStorage.getItem("diffserve-key") || "";
$("key").addEventListener("change", () => {
  localStorage.setItem("diffserve-key", $("key").value.trim());
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
    $("model").innerHTML = "";
    for (const m of list.data) {
      const o = document.createElement("option");
      o.value = m.id;
      o.textContent = `${m.id} (${m.family})`;
      o.selected = m.default;
      $("model").append(o);
    }
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
  $("steps").placeholder = `default ${l.default_steps}`;
  $("guidance_scale").placeholder = `default ${l.default_guidance}`;
  $("scheduler").innerHTML = '<option value="">model default</option>' +
    m.schedulers.map((s) => `<option>${s}</option>`).join("");
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
        const data = JSON.parse((block.match(/^data: (.*)$/m) || [])[1] || "{}");
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
  $("gallery").innerHTML = "";
  job.outputs.forEach((url, i) => {
    const fig = document.createElement("figure");
    fig.innerHTML = `<img src="${url}" alt="output ${i}"><figcaption><a href="${url}" download>download</a>` +
      (job.nsfw[i] ? " · flagged NSFW" : "") + "</figcaption>";
    $("gallery").append(fig);
  });
  $("meta").innerHTML = Object.entries(job.meta).filter(([, v]) => v !== null && v !== "" && !(Array.isArray(v) && !v.length))
    .map(([k, v]) => `<tr><th>${k}</th><td>${escapeHtml(String(v))}</td></tr>`).join("");
  renderCurl();
}

function escapeHtml(s) {
  return s.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));
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
    $("history").tBodies[0].innerHTML = list.data.map((j) => `<tr><td>${j.id}</td><td>${j.status}</td>` +
      `<td>${j.progress.step}/${j.progress.total}</td><td>${j.dialect}</td><td>${escapeHtml(j.model_id)}</td>` +
      `<td>${escapeHtml(j.meta.prompt.slice(0, 60))}</td><td>${j.outputs[0] ? `<img src="${j.outputs[0]}" alt="">` : ""}</td>` +
      `<td>${j.status === "queued" || j.status === "running" ? `<button data-cancel="${j.id}">Cancel</button>` : ""}</td></tr>`).join("");
    for (const b of document.querySelectorAll("[data-cancel]")) {
      b.addEventListener("click", async () => { await api("POST", `/v1/jobs/${b.dataset.cancel}/cancel`); loadHistory(); });
    }
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
    $("workers").tBodies[0].innerHTML = d.workers.map((w) => `<tr><td>${w.worker_id}</td><td>${w.state}</td>` +
      `<td>${w.device || ""}</td><td>${w.dtype || ""}</td><td>${w.labels.join(", ")}</td><td>${w.models.join(", ")}</td>` +
      `<td>${w.current_job ?? ""}</td></tr>`).join("");
  } catch (e) {
    $("admin-error").textContent = e.message;
    $("admin-error").hidden = false;
  }
  $("models").tBodies[0].innerHTML = state.models.map((m) => `<tr><td>${m.id}</td><td>${m.family}</td>` +
    `<td>${m.limits.min_size}–${m.limits.max_size}</td><td>${m.limits.min_steps}–${m.limits.max_steps}</td>` +
    `<td>${m.limits.max_samples}</td><td>${escapeHtml(m.description || "")}</td></tr>`).join("");
}
$("refresh-admin").addEventListener("click", loadAdmin);

loadModels();

// The diffuse web page: submits jobs to /v1/jobs, follows their server-sent events (progress and preview),
// and keeps a gallery of results with their parameters.
"use strict";

const $ = (id) => document.getElementById(id);
const TERMINAL = ["succeeded", "failed", "cancelled"];
let currentJob = null;
let input = null; // {dataUrl, width, height} of the image-to-image input
let maskPainted = false;

function apiKey() {
  return localStorage.getItem("diffuse-api-key") || "";
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (apiKey()) headers["Authorization"] = "Bearer " + apiKey();
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try {
      const body = await response.json();
      if (body.error) {
        message = body.error.message + (body.error.param ? " (" + body.error.param + ")" : "");
      }
    } catch (_) { /* not JSON */ }
    if (response.status === 401) $("api-key").closest("details").open = true;
    throw new Error(message);
  }
  return response;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function loadServerInfo() {
  try {
    const health = await (await fetch("/health")).json();
    $("server-status").textContent = health.status + " · " + health.models.length + " model(s)";
    const models = (await (await api("/v1/models")).json()).data;
    $("model").replaceChildren(...models.map((m) => new Option(m.id, m.id)));
    $("model").dataset.models = JSON.stringify(models);
    applyModelDefaults();
    const schedulers = (await (await api("/v1/schedulers")).json()).data;
    for (const name of schedulers) $("scheduler").add(new Option(name, name));
    await loadNetworks();
  } catch (e) {
    setStatus("Could not reach the server: " + e.message, true);
  }
}

// The server's LoRAs and embeddings; a click adds a LoRA's <lora:NAME:1> tag, or an embedding's trigger word,
// to the prompt.
async function loadNetworks() {
  const loras = await (await api("/sdapi/v1/loras")).json();
  const embeddings = Object.keys((await (await api("/sdapi/v1/embeddings")).json()).loaded || {});
  const chip = (label, text) => {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = label;
    button.addEventListener("click", () => {
      const prompt = $("prompt");
      prompt.value = prompt.value ? prompt.value.trimEnd() + " " + text : text;
    });
    return button;
  };
  $("lora-list").replaceChildren(...loras.map((l) => chip("LoRA: " + l.name, "<lora:" + l.name + ":1>")));
  $("embedding-list").replaceChildren(...embeddings.map((name) => chip("Embedding: " + name, name)));
  if (!loras.length && !embeddings.length) {
    $("lora-list").textContent = "None on this server (see diffuse serve --lora-dir).";
  }
}

function currentModel() {
  const models = JSON.parse($("model").dataset.models || "[]");
  return models.find((m) => m.id === $("model").value);
}

function isAudio() {
  const model = currentModel();
  return Boolean(model && model.kind === "audio");
}

function applyModelDefaults() {
  const model = currentModel();
  if (!model) return;
  // An audio model (AudioLDM) takes a length instead of a size, and no input image, LoRAs or embeddings.
  const audio = model.kind === "audio";
  for (const el of document.querySelectorAll(".image-only")) el.hidden = audio;
  for (const el of document.querySelectorAll(".audio-only")) el.hidden = !audio;
  if (audio) {
    $("audio-length").value = model.default_audio_length_s;
    // AudioLDM's defaults in diffusers.
    $("steps").value = 10;
    $("guidance").value = 2.5;
    return;
  }
  if (input) return;
  $("width").value = model.default_width;
  $("height").value = model.default_height;
  $("width").step = $("height").step = model.size_multiple;
}

function settingsFromForm() {
  if (isAudio()) {
    const settings = {
      model: $("model").value,
      prompt: $("prompt").value,
      negative_prompt: $("negative").value,
      n: parseInt($("n-audio").value, 10),
      steps: parseInt($("steps").value, 10),
      guidance: parseFloat($("guidance").value),
      seed: parseInt($("seed").value, 10),
    };
    if ($("audio-length").value !== "") settings.audio_length_s = parseFloat($("audio-length").value);
    if ($("scheduler").value) settings.scheduler = $("scheduler").value;
    return settings;
  }
  const settings = {
    model: $("model").value,
    prompt: $("prompt").value,
    negative_prompt: $("negative").value,
    width: parseInt($("width").value, 10),
    height: parseInt($("height").value, 10),
    n: parseInt($("n").value, 10),
    steps: parseInt($("steps").value, 10),
    guidance: parseFloat($("guidance").value),
    seed: parseInt($("seed").value, 10),
  };
  if ($("scheduler").value) settings.scheduler = $("scheduler").value;
  return settings;
}

function applySettings(settings) {
  $("model").value = settings.model;
  $("prompt").value = settings.prompt;
  $("negative").value = settings.negative_prompt || "";
  applyModelDefaults();
  for (const key of ["width", "height", "n", "steps", "guidance", "seed"]) {
    if (settings[key] !== undefined) $(key).value = settings[key];
  }
  if (settings.audio_length_s !== undefined) $("audio-length").value = settings.audio_length_s;
  if (settings.audio_length_s !== undefined && settings.n !== undefined) $("n-audio").value = settings.n;
  $("scheduler").value = settings.scheduler || "";
}

function maskDataUrl() {
  const source = $("mask-canvas");
  const out = document.createElement("canvas");
  out.width = source.width;
  out.height = source.height;
  const ctx = out.getContext("2d");
  ctx.drawImage(source, 0, 0);
  ctx.globalCompositeOperation = "source-in";
  ctx.fillStyle = "white";
  ctx.fillRect(0, 0, out.width, out.height);
  ctx.globalCompositeOperation = "destination-over";
  ctx.fillStyle = "black";
  ctx.fillRect(0, 0, out.width, out.height);
  return out.toDataURL("image/png");
}

async function generate(event) {
  event.preventDefault();
  const settings = settingsFromForm();
  const body = Object.assign({}, settings);
  if (input && !isAudio()) {
    body.image = input.dataUrl;
    // Empty: the API's default (0.8 for image-to-image, 1 for inpainting), as every client gets it.
    if ($("strength").value !== "") body.strength = parseFloat($("strength").value);
    if (maskPainted) body.mask = maskDataUrl();
  }
  $("generate").disabled = true;
  $("cancel").disabled = false;
  $("progress").value = 0;
  setStatus("Submitting…");
  try {
    const job = await (await api("/v1/jobs", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    })).json();
    currentJob = job.id;
    settings.seed = job.seed;
    const final = await follow(job.id);
    await finish(final, settings);
  } catch (e) {
    setStatus(e.message, true);
  } finally {
    currentJob = null;
    $("generate").disabled = false;
    $("cancel").disabled = true;
  }
}

function show(status) {
  $("progress").value = status.progress.fraction;
  if (status.state === "queued") {
    setStatus("Queued" + (status.queue_position !== null ? " (position " + (status.queue_position + 1) + ")" : ""));
  } else if (status.state === "running") {
    setStatus("Step " + status.progress.step + " of " + status.progress.total);
  }
  if (status.preview) {
    $("preview").src = status.preview;
    $("preview").hidden = false;
  }
}

// Reads the job's server-sent events; falls back to polling if the stream breaks.
async function follow(id) {
  try {
    const response = await api("/v1/jobs/" + id + "/events");
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const chunk = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = chunk.split("\n").filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
        if (!data) continue;
        const status = JSON.parse(data);
        show(status);
        if (TERMINAL.includes(status.state)) return status;
      }
    }
  } catch (e) {
    console.warn("event stream failed, polling", e);
  }
  for (;;) {
    const status = await (await api("/v1/jobs/" + id)).json();
    show(status);
    if (TERMINAL.includes(status.state)) return status;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

async function finish(status, settings) {
  if (status.state !== "succeeded") {
    $("preview").hidden = true;
    const why = status.error ? status.error.message : status.state;
    setStatus(status.state === "cancelled" ? "Cancelled." : "Failed: " + why, status.state !== "cancelled");
    return;
  }
  const seconds = status.finished_at - status.created_at;
  setStatus("Done in " + seconds.toFixed(1) + " s.");
  $("progress").value = 1;
  for (const [i, image] of status.images.entries()) {
    const blob = await (await api(image.url)).blob();
    const url = URL.createObjectURL(blob);
    // The live area ends on the final image, not on the last latent preview (whose colours are approximate).
    if (i === 0) $("preview").src = url;
    // An audio output's picture is its mel spectrogram; the sound comes as a WAV.
    const sound = image.audio ? URL.createObjectURL(await (await api(image.audio.url)).blob()) : null;
    // The whole batch comes from one seed (diffusers' batching): reusing n and the seed reproduces this image.
    addCard(url, image, Object.assign({}, settings, { seed: image.seed }), sound);
  }
}

function addCard(url, image, settings, sound) {
  const card = $("card").content.firstElementChild.cloneNode(true);
  card.querySelector("img").src = url;
  card.querySelector(".parameters").textContent = image.parameters;
  card.querySelector(".download").href = sound || url;
  if (sound) {
    const player = card.querySelector("audio");
    player.src = sound;
    player.hidden = false;
    card.querySelector("img").alt = "mel spectrogram";
    card.querySelector(".download").download = "diffuse.wav";
    card.querySelector(".use-input").hidden = true;
  }
  card.querySelector(".reuse").addEventListener("click", () => applySettings(settings));
  card.querySelector(".use-input").addEventListener("click", () => loadInput(url));
  $("gallery").prepend(card);
}

function loadInput(url) {
  const img = new Image();
  img.onload = () => {
    for (const canvas of [$("image-canvas"), $("mask-canvas")]) {
      canvas.width = img.naturalWidth;
      canvas.height = img.naturalHeight;
    }
    $("image-canvas").getContext("2d").drawImage(img, 0, 0);
    clearMask();
    input = {
      dataUrl: $("image-canvas").toDataURL("image/png"),
      width: img.naturalWidth,
      height: img.naturalHeight,
    };
    const step = parseInt($("width").step, 10) || 8;
    $("width").value = Math.max(step, Math.floor(img.naturalWidth / step) * step);
    $("height").value = Math.max(step, Math.floor(img.naturalHeight / step) * step);
    $("canvas-box").hidden = false;
    $("image-tools").hidden = false;
  };
  img.onerror = () => setStatus("That file is not an image this browser can read.", true);
  img.src = url;
}

function clearMask() {
  const canvas = $("mask-canvas");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  maskPainted = false;
}

function removeInput() {
  input = null;
  $("image-file").value = "";
  $("canvas-box").hidden = true;
  $("image-tools").hidden = true;
  clearMask();
  applyModelDefaults();
}

function setUpBrush() {
  const canvas = $("mask-canvas");
  let last = null;
  const point = (event) => {
    const rect = canvas.getBoundingClientRect();
    return {
      x: (event.clientX - rect.left) * (canvas.width / rect.width),
      y: (event.clientY - rect.top) * (canvas.height / rect.height),
    };
  };
  const width = () => parseInt($("brush").value, 10) * (canvas.width / canvas.getBoundingClientRect().width);
  const stroke = (to) => {
    const ctx = canvas.getContext("2d");
    ctx.strokeStyle = ctx.fillStyle = "#ff2e63";
    ctx.lineWidth = width();
    ctx.lineCap = "round";
    ctx.beginPath();
    if (last) {
      ctx.moveTo(last.x, last.y);
      ctx.lineTo(to.x, to.y);
      ctx.stroke();
    } else {
      ctx.arc(to.x, to.y, width() / 2, 0, 2 * Math.PI);
      ctx.fill();
    }
    last = to;
    maskPainted = true;
  };
  canvas.addEventListener("pointerdown", (event) => {
    canvas.setPointerCapture(event.pointerId);
    last = null;
    stroke(point(event));
  });
  canvas.addEventListener("pointermove", (event) => {
    if (last) stroke(point(event));
  });
  for (const type of ["pointerup", "pointercancel"]) canvas.addEventListener(type, () => { last = null; });
}

async function cancel() {
  if (!currentJob) return;
  try {
    await api("/v1/jobs/" + currentJob, { method: "DELETE" });
  } catch (e) {
    setStatus(e.message, true);
  }
}

$("form").addEventListener("submit", generate);
$("cancel").addEventListener("click", cancel);
$("model").addEventListener("change", applyModelDefaults);
$("image-file").addEventListener("change", () => {
  const file = $("image-file").files[0];
  if (file) loadInput(URL.createObjectURL(file));
});
$("clear-mask").addEventListener("click", clearMask);
$("remove-image").addEventListener("click", removeInput);
$("api-key").value = apiKey();
$("api-key").addEventListener("change", () => {
  localStorage.setItem("diffuse-api-key", $("api-key").value.trim());
  loadServerInfo();
});
setUpBrush();
loadServerInfo();

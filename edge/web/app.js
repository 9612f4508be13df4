// The browser edge client: tokenizer, text encoder, image encoder and decoder run here (TF.js);
// POST /api/v1/diffuse does only the diffusion. Query options: ?backend=wasm (force one),
// ?exports=/exports/ (where manifest.json is), ?api= (server base URL, default this origin),
// ?tfserving=/v1/models/diffusion (TF Serving's model URL instead of the web app: tf_serving.js).
import { selectBackend, ORDER } from "./backend.js";
import { findArtifact, loadManifest, loadModel, run, vaeChoices } from "./models.js";
import { CLIPTokenizer } from "./tokenizer.js";
import { encodePrompt, tokenLabel } from "./prompt_weighting.js";
import { usesUnconditional } from "./guidance.js";
import { pasteBack, repaintMask } from "./imaging.js";
import { asJson, hasLoraTag, planLoras } from "./loras.js";
import { infotext, KEY as PNG_KEY, withText } from "./png.js";
import * as wire from "./wire.js";
import { diffuseOnTFServing } from "./tf_serving.js";

const tf = globalThis.tf;
const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(location.search);
const EXPORTS = new URL(query.get("exports") || "/exports/", location.href);
const API = (query.get("api") || location.origin).replace(/\/$/, "");
const TF_SERVING = query.get("tfserving") ? new URL(query.get("tfserving"), location.href).href : null;

const state = {
  ready: false, busy: false, mode: "txt2img", manifest: null, tokenizer: null,
  models: {}, precision: null, backend: null, image: null, last: null, error: null, serverInfo: null,
  controller: null, progress: null, shown: 0, downloadUrl: null, images: [],
};
// For tests and the console: window.sdEdge.state.last holds the latest result.
window.sdEdge = { state, generate: () => generate(), stop: () => stop(), image: (k) => Array.from(state.images[k]) };

function setStatus(text, kind = "ok") {
  const el = $("status");
  el.textContent = text;
  el.dataset.state = kind;
}
const ms = (t) => `${t.toFixed(0)} ms`;
const kb = (n) => `${n} B (${(n / 1024).toFixed(1)} KiB)`;

async function ensureModels(precision, vae = "full") {
  if (state.precision === precision && state.vae === vae) return;
  const t0 = performance.now();
  const sources = [];
  let bytes = 0;
  for (const c of ["text_encoder", "decoder", "image_encoder"]) {
    if (c === "image_encoder" && !findArtifact(state.manifest, c, precision, vae)) continue; // only inpainting needs it
    setStatus(`Loading ${c} (${precision}${c === "text_encoder" ? "" : `, ${vae} VAE`})…`, "busy");
    if (state.models[c]) state.models[c].model.dispose();
    state.models[c] = await loadModel(tf, EXPORTS, state.manifest, c, precision, vae);
    sources.push(`${c}: ${state.models[c].source}`);
    bytes += state.models[c].bytes;
  }
  state.precision = precision;
  state.vae = vae;
  state.modelSources = Object.fromEntries(Object.entries(state.models).map(([k, v]) => [k, v.source]));
  state.modelFiles = Object.fromEntries(Object.entries(state.models).map(([k, v]) => [k, v.component]));
  $("weights").textContent = `${precision}, ${(bytes / 1e6).toFixed(1)} MB (${sources.join(", ")}) in ${ms(performance.now() - t0)}`;
}

// The server's rule (prompt_weighting.js = models/prompt_weighting.py): emphasis and 75-token
// chunks; the 77-token text encoder runs once per chunk -> { values, shape [1, 77 k, D] }.
async function encodeText(prompt, minChunks = 1) {
  return encodePrompt(state.tokenizer, prompt, async (ids) => {
    const t = tf.tensor(ids, [1, ids.length], "int32");
    const out = await run(state.models.text_encoder.model, { token_ids: t });
    const values = await out.context.data();
    t.dispose();
    out.context.dispose();
    return Float32Array.from(values);
  }, minChunks);
}

const TF_SERVING_LORAS = "TF Serving serves the model as it was exported: LoRAs are baked in at export "
  + "(python -m exports --lora NAME), not chosen per request";

// TF Serving takes both contexts, of one chunk count: the negative prompt, or the empty prompt
// (what the web app uses when none is given), padded with empty chunks as the web app pads them.
async function tfServingContexts(s, plan, batch) {
  if (state.mode === "inpaint") {
    throw new Error("this page sends txt2img to TF Serving; inpaint there with the Python client "
      + "(python -m edge.client --tf-serving URL --image ... --mask ...)");
  }
  let ctx = await encodeText(plan.text);
  const guided = usesUnconditional(s.guidance, state.manifest);
  const un = guided ? await encodeText(s.negative || "", ctx.chunks) : ctx;
  if (un.chunks > ctx.chunks) ctx = await encodeText(plan.text, un.chunks);
  const msg = (c) => repeatRows(tensorMsg(c.values, c.shape, "float16"), batch);
  return { context: msg(ctx), unconditional_context: msg(un) };
}

function tensorMsg(values, shape, dtype) {
  return dtype === "float16"
    ? { dtype: "F16", shape, data: wire.float32ToFloat16(values) }
    : { dtype: "F32", shape, data: Float32Array.from(values) };
}

/** The message with its one row repeated `n` times (a batch: one prompt, seeds seed, seed+1, ...). */
function repeatRows(msg, n) {
  if (n === 1) return msg;
  const data = new msg.data.constructor(msg.data.length * n);
  for (let k = 0; k < n; k++) data.set(msg.data, k * msg.data.length);
  return { ...msg, shape: [msg.shape[0] * n, ...msg.shape.slice(1)], data };
}

// ---- LoRAs: the server's (GET /api/v1/models), picked with a weight (0 = off) or by prompt tags ----
function renderLoras() {
  const loras = (state.serverInfo && state.serverInfo.loras) || {};
  const list = $("lora-list");
  list.replaceChildren();
  for (const [name, d] of Object.entries(loras)) {
    const label = document.createElement("label");
    const input = document.createElement("input");
    Object.assign(input, { type: "number", step: "0.05", min: "-10", max: "10", value: "0" });
    input.dataset.lora = name;
    const note = d.edge_parts_valid ? "UNet" : "text encoder: encoded on the server";
    label.append(`${name} (${note}) `, input);
    list.append(label);
  }
  $("loras").hidden = Object.keys(loras).length === 0;
}

function pickedLoras() {
  return [...document.querySelectorAll("#lora-list input[data-lora]")]
    .map((el) => [el.dataset.lora, Number(el.value)])
    .filter(([, w]) => w !== 0);
}

async function apiError(r, data) {
  let msg = new TextDecoder().decode(data);
  try {
    const err = JSON.parse(msg).error;
    msg = err ? `${err.message} (${err.code})` : msg;
  } catch (e) { /* not JSON */ }
  return new Error(`the server answered ${r.status}: ${msg}`);
}

// The prompts encoded by the server's text encoder with the LoRAs that change it (this page's
// exported text encoder is the base one): rows of the context, and the set the server applied.
async function encodeOnServer(prompts, loras, dtype) {
  const r = await fetch(`${API}/api/v1/encode`, {
    method: "POST", headers: { "Content-Type": "application/json", Accept: wire.MEDIA_TYPE },
    body: JSON.stringify({ prompts, dtype, loras: JSON.parse(asJson(loras)) }),
  });
  const data = new Uint8Array(await r.arrayBuffer());
  if (!r.ok) throw await apiError(r, data);
  const { tensors, metadata } = wire.decode(data);
  const c = tensors.context;
  const row = c.shape[1] * c.shape[2];
  const rows = prompts.map((_, k) => ({ dtype: c.dtype, shape: [1, c.shape[1], c.shape[2]],
    data: c.data.slice(k * row, (k + 1) * row) }));
  return { rows, applied: metadata.loras || "[]" };
}

// Server-sent events (webapp/api/events.py): {kind, data} for each "event:/data:" block.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const text = new TextDecoder();
  let buffer = "";
  let bytes = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    bytes += value.length;
    buffer += text.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let kind = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) kind = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) onEvent(kind, JSON.parse(data));
    }
  }
  return bytes;
}

function fromBase64(text) {
  const raw = atob(text);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

// POST /api/v1/diffuse asking for step events (progress), then the binary answer they carry.
async function diffuse(tensors, params, { signal, onStep } = {}) {
  const body = wire.encode(tensors);
  const qs = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== null && v !== "" && v !== undefined));
  const r = await fetch(`${API}/api/v1/diffuse?${qs}`, {
    method: "POST", body, signal,
    headers: { "Content-Type": wire.MEDIA_TYPE, Accept: `text/event-stream, ${wire.MEDIA_TYPE};q=0.5` },
  });
  let data;
  let received;
  if (r.ok && (r.headers.get("content-type") || "").startsWith("text/event-stream")) {
    let failure = null;
    received = await readEvents(r, (kind, d) => {
      if (kind === "step" && onStep) onStep(d.step, d.of);
      else if (kind === "result") data = fromBase64(d.body);
      else if (kind === "error") failure = new Error(`the server answered ${d.status}: ${d.error.message} (${d.error.code})`);
    });
    if (failure) throw failure;
    if (!data) throw new Error("the server's event stream ended without a result");
  } else { // an error before the queue, or a server without step events: one binary body
    data = new Uint8Array(await r.arrayBuffer());
    received = data.length;
    if (!r.ok) throw await apiError(r, data);
  }
  const { tensors: out, metadata } = wire.decode(data);
  if (!out.latents) throw new Error("the server's answer has no latents");
  return { latents: out.latents, metadata, sent: body.length, received, body: data.length };
}

/** The decoder on [B, h, w, 4] latents: {images: [B uint8 RGB arrays], h, w}. */
async function decode(latents) {
  const values = wire.asFloat32(latents);
  const t = tf.tensor(values, latents.shape, "float32");
  const out = await run(state.models.decoder.model, { latents: t });
  const [n, h, w] = out.images.shape;
  const all = Uint8Array.from(await out.images.data()); // uint8 arrives as int32 in TF.js
  t.dispose();
  Object.values(out).forEach((x) => x.dispose());
  const images = [];
  for (let k = 0; k < n; k++) images.push(all.subarray(k * h * w * 3, (k + 1) * h * w * 3));
  return { images, h, w };
}

async function encodeImage(rgb, h, w) {
  const t = tf.tensor(Int32Array.from(rgb), [1, h, w, 3], "int32");
  const out = await run(state.models.image_encoder.model, { images: t });
  const values = Float32Array.from(await out.latents.data());
  const shape = out.latents.shape;
  t.dispose();
  out.latents.dispose();
  return { values, shape };
}

function draw(canvas, rgb, h, w) {
  canvas.width = w;
  canvas.height = h;
  const img = new ImageData(w, h);
  for (let p = 0; p < h * w; p++) {
    img.data[p * 4] = rgb[p * 3];
    img.data[p * 4 + 1] = rgb[p * 3 + 1];
    img.data[p * 4 + 2] = rgb[p * 3 + 2];
    img.data[p * 4 + 3] = 255;
  }
  canvas.getContext("2d").putImageData(img, 0, 0);
}

function readMask() {
  const c = $("mask");
  const a = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  const alpha = new Uint8Array(c.width * c.height);
  for (let p = 0; p < alpha.length; p++) alpha[p] = a[p * 4 + 3];
  return repaintMask(alpha); // the brush's opacity is the grey level: models/masks.py's rule
}

function settings() {
  const seed = $("seed").value.trim();
  return {
    prompt: $("prompt").value, negative: $("negative").value.trim(),
    seed: seed === "" ? null : Number(seed), steps: Number($("steps").value),
    guidance: Number($("guidance").value), scheduler: $("scheduler").value,
    precision: $("precision").value, dtype: $("dtype").value, vae: $("vae").value,
    maskBlur: Number($("mask-blur").value), strength: Number($("strength").value),
    batch: Math.max(1, Math.floor(Number($("batch").value) || 1)), size: $("size").value,
  };
}

// ---- Stop, progress, the batch gallery, the download --------------------------------------------
function stop() {
  if (state.controller) state.controller.abort(); // the server sees the client leave and stops at its next step
}

function showProgress(step, of) {
  state.progress = { step, of };
  const bar = $("progress");
  bar.hidden = false;
  bar.max = of;
  bar.value = step;
  setStatus(`Diffusing on the server: step ${step} of ${of}…`, "busy");
}

async function show(k) {
  const last = state.last;
  state.shown = k;
  draw($("image"), state.images[k], last.height, last.width);
  for (const [i, b] of [...$("gallery").children].entries()) b.setAttribute("aria-pressed", String(i === k));
  $("image").setAttribute("aria-label", `The generated image${last.count > 1 ? ` ${k + 1} of ${last.count}` : ""}, `
    + `seed ${last.seeds[k]}: ${last.prompt}`);
  await prepareDownload(k);
}

function renderGallery(last) {
  const g = $("gallery");
  g.replaceChildren();
  g.hidden = last.count < 2;
  if (g.hidden) return;
  state.images.forEach((rgb, k) => {
    const b = document.createElement("button");
    b.type = "button";
    b.setAttribute("aria-label", `image ${k + 1}, seed ${last.seeds[k]}`);
    const c = document.createElement("canvas");
    draw(c, rgb, last.height, last.width);
    b.append(c);
    b.addEventListener("click", () => show(k));
    g.append(b);
  });
}

async function prepareDownload(k) {
  const last = state.last;
  const canvas = document.createElement("canvas");
  draw(canvas, state.images[k], last.height, last.width);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  const text = infotext(last.prompt, last.negative, last.infotextFields[k] || "");
  const png = withText(await blob.arrayBuffer(), PNG_KEY, text);
  if (state.downloadUrl) URL.revokeObjectURL(state.downloadUrl);
  state.downloadUrl = URL.createObjectURL(new Blob([png], { type: "image/png" }));
  const a = $("download");
  a.href = state.downloadUrl;
  a.download = `edge-${last.seeds[k]}.png`;
  a.hidden = false;
  last.download = { index: k, parameters: text };
}

function fillSizes(manifest, limits) {
  const step = manifest.image.size_multiple || 8;
  const base = manifest.image.width;
  const top = Math.min((limits && limits.max_side) || base * 2, base * 2);
  const sel = $("size");
  sel.replaceChildren();
  for (const [w, h] of [[base, base], [base + step, base], [base, base + step], [top, top]]) {
    if (w > top || h > top || [...sel.options].some((o) => o.value === `${w}x${h}`)) continue;
    sel.add(new Option(`${w} × ${h}`, `${w}x${h}`, w === base && h === base, w === base && h === base));
  }
}

async function generate() {
  if (!state.ready || state.busy) return null;
  state.busy = true;
  state.controller = new AbortController();
  state.progress = null;
  $("run").disabled = true;
  $("stop").disabled = false;
  const s = settings();
  const timings = {};
  const batch = state.mode === "inpaint" ? 1 : s.batch; // inpainting: one image of the uploaded one
  try {
    await ensureModels(s.precision, s.vae);
    // the request's LoRAs by the server's rule (edge/web/loras.js): tags out of the prompt; a
    // text-encoder LoRA makes this page's text encoder wrong for it, so the server encodes
    if (TF_SERVING && (pickedLoras().length || hasLoraTag(s.prompt))) throw new Error(TF_SERVING_LORAS);
    const plan = planLoras(s.prompt, s.negative, pickedLoras(), state.serverInfo);
    const tensors = {};
    const params = { seed: s.seed, steps: s.steps, guidance_scale: s.guidance, scheduler: s.scheduler, dtype: s.dtype };
    if (plan.unet.length) params.loras = asJson(plan.unet);
    let t = performance.now();
    if (TF_SERVING) {
      setStatus("Encoding the prompt…", "busy");
      Object.assign(tensors, await tfServingContexts(s, plan, batch));
    } else if (plan.encodeOnServer) {
      setStatus("Encoding the prompt on the server (a LoRA changes the text encoder)…", "busy");
      const guided = usesUnconditional(s.guidance, state.manifest);
      const enc = await encodeOnServer(guided ? [plan.text, s.negative] : [plan.text], plan.textEncoder, s.dtype);
      tensors.context = repeatRows(enc.rows[0], batch);
      if (guided) tensors.unconditional_context = repeatRows(enc.rows[1], batch); // the empty prompt must see the LoRA too
      params.context_loras = asJson(JSON.parse(enc.applied));
    } else {
      setStatus("Encoding the prompt…", "busy");
      const ctx = await encodeText(plan.text);
      tensors.context = repeatRows(tensorMsg(ctx.values, ctx.shape, s.dtype), batch);
      // without a negative prompt the server uses the model's own empty-prompt context; with
      // guidance off (<= 1) or an LCM UNet it reads no unconditional context at all
      if (s.negative && usesUnconditional(s.guidance, state.manifest)) {
        const un = await encodeText(s.negative);
        tensors.unconditional_context = repeatRows(tensorMsg(un.values, un.shape, s.dtype), batch);
      }
    }
    timings.text = performance.now() - t;
    let mask = null;
    let image = null;
    if (state.mode === "inpaint") {
      if (!state.image) throw new Error("upload an image first");
      image = state.image;
      mask = readMask();
      if (!mask.some((v) => v)) throw new Error("paint a mask over the part to repaint");
      setStatus("Encoding the image…", "busy");
      t = performance.now();
      const lat = await encodeImage(image.rgb, image.h, image.w);
      timings.image = performance.now() - t;
      tensors.image_latents = tensorMsg(lat.values, lat.shape, s.dtype);
      tensors.mask = { dtype: "U8", shape: [image.h, image.w], data: mask };
      Object.assign(params, { mask_blur: s.maskBlur, strength: s.strength });
    } else if (s.size) {
      const [w, h] = s.size.split("x").map(Number);
      Object.assign(params, { width: w, height: h });
    }
    setStatus(TF_SERVING ? "Diffusing on TF Serving…" : "Diffusing on the server…", "busy");
    t = performance.now();
    const res = TF_SERVING
      ? await diffuseOnTFServing(TF_SERVING, state.manifest, tensors.context, tensors.unconditional_context, params,
        state.controller.signal)
      : await diffuse(tensors, params, { signal: state.controller.signal, onStep: showProgress });
    timings.diffuse = performance.now() - t;
    setStatus("Decoding…", "busy");
    t = performance.now();
    const dec = await decode(res.latents);
    let images = dec.images;
    if (mask) images = [pasteBack(image.rgb, images[0], mask, dec.h, dec.w, s.maskBlur)];
    timings.decode = performance.now() - t;
    $("mask").classList.toggle("faded", Boolean(mask)); // show the result; painting shows the mask again
    const seeds = JSON.parse(res.metadata.seeds || "[]");
    state.last = {
      mode: state.mode, pixels: Array.from(images[0]), count: images.length, height: dec.h, width: dec.w, seeds,
      parameters: JSON.parse(res.metadata.parameters || "{}"), sent: res.sent, received: res.received,
      bodyBytes: res.body, timings, backend: state.backend, mask: mask ? Array.from(mask) : null,
      image: image ? Array.from(image.rgb) : null, modelSources: state.modelSources, modelFiles: state.modelFiles,
      loras: { unet: plan.unet, textEncoder: plan.textEncoder, encodedOnServer: plan.encodeOnServer },
      prompt: s.prompt, negative: s.negative, infotextFields: JSON.parse(res.metadata.infotext_fields || "[]"),
      steps: state.progress,
    };
    state.images = images; // typed arrays, kept out of `last` (tests read it as JSON): sdEdge.image(k)
    renderGallery(state.last);
    await show(0);
    $("t-text").textContent = ms(timings.text);
    $("t-image").textContent = timings.image === undefined ? "–" : ms(timings.image);
    $("t-diffuse").textContent = ms(timings.diffuse);
    $("t-decode").textContent = ms(timings.decode);
    $("b-sent").textContent = kb(res.sent);
    $("b-received").textContent = kb(res.received);
    $("out-seed").textContent = seeds.join(", ");
    setStatus(`Done: ${images.length} image${images.length > 1 ? "s" : ""} in ${(
      Object.values(timings).reduce((a, b) => a + b, 0) / 1000).toFixed(1)} s.`, "done");
    return state.last;
  } catch (e) {
    if (e.name === "AbortError") {
      const p = state.progress;
      state.error = null;
      setStatus(p ? `Stopped at step ${p.step} of ${p.of}.` : "Stopped.", "stopped");
      return null;
    }
    state.error = String(e.message || e);
    setStatus(`Error: ${state.error}`, "error");
    return null;
  } finally {
    state.busy = false;
    state.controller = null;
    $("run").disabled = false;
    $("stop").disabled = true;
    $("progress").hidden = true;
  }
}

// ---- inpainting canvas ------------------------------------------------------------------------
function loadImageFile(file) {
  const url = URL.createObjectURL(file);
  const img = new Image();
  img.onload = () => {
    const { height: h, width: w } = state.manifest.image;
    const c = $("image");
    c.width = w;
    c.height = h;
    const ctx = c.getContext("2d");
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(img, 0, 0, w, h); // the exported encoder's size
    const rgba = ctx.getImageData(0, 0, w, h).data;
    const rgb = new Uint8Array(w * h * 3);
    for (let p = 0; p < w * h; p++) for (let k = 0; k < 3; k++) rgb[p * 3 + k] = rgba[p * 4 + k];
    state.image = { rgb, h, w };
    clearMask();
    URL.revokeObjectURL(url);
    setStatus("Image loaded: paint the mask.", "done");
  };
  img.onerror = () => setStatus("Error: that file is not an image this browser reads", "error");
  img.src = url;
}

function clearMask() {
  const m = $("mask");
  m.width = state.manifest.image.width;
  m.height = state.manifest.image.height;
  m.getContext("2d").clearRect(0, 0, m.width, m.height);
  m.classList.remove("faded");
}

function installPainting() {
  const m = $("mask");
  let down = false;
  const paint = (ev) => {
    const r = m.getBoundingClientRect();
    const x = ((ev.clientX - r.left) / r.width) * m.width;
    const y = ((ev.clientY - r.top) / r.height) * m.height;
    const radius = (Number($("brush").value) / 2) * (m.width / 64);
    const ctx = m.getContext("2d");
    ctx.fillStyle = "rgba(255, 255, 255, 1)";
    ctx.beginPath();
    ctx.arc(x, y, radius, 0, 2 * Math.PI);
    ctx.fill();
  };
  m.addEventListener("pointerdown", (ev) => {
    down = true;
    m.classList.remove("faded");
    m.setPointerCapture(ev.pointerId);
    paint(ev);
  });
  m.addEventListener("pointermove", (ev) => { if (down) paint(ev); });
  m.addEventListener("pointerup", () => { down = false; });
}

function setMode(mode) {
  state.mode = mode;
  $("tab-txt2img").classList.toggle("active", mode === "txt2img");
  $("tab-inpaint").classList.toggle("active", mode === "inpaint");
  $("inpaint-controls").hidden = mode !== "inpaint";
  $("txt2img-controls").hidden = mode === "inpaint";
  $("mask").hidden = mode !== "inpaint";
  $("run").textContent = mode === "inpaint" ? "Inpaint" : "Generate";
  if (mode === "inpaint" && state.image) draw($("image"), state.image.rgb, state.image.h, state.image.w);
}

async function main() {
  try {
    const forced = query.get("backend");
    const { name, tried } = await selectBackend(tf, forced ? [forced] : ORDER);
    state.backend = name;
    $("backend").textContent = tried.length ? `${name} (${tried.join("; ")})` : name;
    state.manifest = await loadManifest(EXPORTS);
    const m = state.manifest;
    $("model").textContent = `${m.model.version}: ${m.image.width}×${m.image.height} px, latent `
      + `${m.latent.height}×${m.latent.width}×${m.latent.channels}, context ${m.context.length}×${m.context.dim}`
      + (m.model.model_family ? `, ${m.model.model_family} ${m.model.prediction_type}, clip skip ${m.model.clip_skip}` : "");
    const tokDir = new URL(m.tokenizer.tfjs_files.vocab.replace(/vocab\.json$/, ""), EXPORTS);
    state.tokenizer = await CLIPTokenizer.load(tokDir.href);
    try { // the server's LoRAs (none, or an older server: no picker)
      const r = await fetch(`${API}/api/v1/models`);
      state.serverInfo = r.ok ? await r.json() : null;
    } catch (e) { state.serverInfo = null; }
    renderLoras();
    fillSizes(m, state.serverInfo && state.serverInfo.limits);
    if (state.serverInfo && state.serverInfo.limits) $("batch").max = String(state.serverInfo.limits.max_batch);
    for (const s of m.schedulers) $("scheduler").add(new Option(s, s, s === m.default_scheduler, s === m.default_scheduler));
    for (const opt of $("precision").options) { // only the precisions this export has (the bundled one: float16)
      opt.disabled = !m.artifacts.some((a) => a.format === "tfjs" && a.component === "text_encoder"
        && a.precision === opt.value);
    }
    const usable = [...$("precision").options].find((o) => !o.disabled);
    if ($("precision").selectedOptions[0].disabled && usable) $("precision").value = usable.value;
    for (const v of vaeChoices(m)) $("vae").add(new Option(v === "taesd" ? "TAESD (fast)" : "full VAE", v));
    await ensureModels($("precision").value, $("vae").value);
    clearMask();
    installPainting();
    const count = () => {
      $("token-count").textContent = tokenLabel(state.tokenizer, $("prompt").value);
    };
    $("prompt").addEventListener("input", count);
    count();
    $("run").addEventListener("click", generate);
    $("stop").addEventListener("click", stop);
    $("tab-txt2img").addEventListener("click", () => setMode("txt2img"));
    $("tab-inpaint").addEventListener("click", () => setMode("inpaint"));
    $("image-file").addEventListener("change", (ev) => ev.target.files[0] && loadImageFile(ev.target.files[0]));
    $("clear-mask").addEventListener("click", clearMask);
    state.ready = true;
    $("run").disabled = false;
    setStatus("Ready.", "ready");
  } catch (e) {
    state.error = String(e.message || e);
    setStatus(`Error: ${state.error}`, "error");
  }
}

main();

// The browser edge client: tokenizer, text encoder, image encoder and decoder run here (TF.js);
// POST /api/v1/diffuse does only the diffusion. Query options: ?backend=wasm (force one),
// ?exports=/exports/ (where manifest.json is), ?api= (server base URL, default this origin).
import { selectBackend, ORDER } from "./backend.js";
import { findArtifact, loadManifest, loadModel, run, vaeChoices } from "./models.js";
import { CLIPTokenizer } from "./tokenizer.js";
import { encodePrompt, tokenLabel } from "./prompt_weighting.js";
import { usesUnconditional } from "./guidance.js";
import { pasteBack, repaintMask } from "./imaging.js";
import { asJson, planLoras } from "./loras.js";
import * as wire from "./wire.js";

const tf = globalThis.tf;
const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(location.search);
const EXPORTS = new URL(query.get("exports") || "/exports/", location.href);
const API = (query.get("api") || location.origin).replace(/\/$/, "");

const state = {
  ready: false, busy: false, mode: "txt2img", manifest: null, tokenizer: null,
  models: {}, precision: null, backend: null, image: null, last: null, error: null, serverInfo: null,
};
// For tests and the console: window.sdEdge.state.last holds the latest result.
window.sdEdge = { state, generate: () => generate() };

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
  $("weights").textContent = `${precision}, ${(bytes / 1e6).toFixed(1)} MB (${sources.join(", ")}) in ${ms(performance.now() - t0)}`;
}

// The server's rule (prompt_weighting.js = models/prompt_weighting.py): emphasis and 75-token
// chunks; the 77-token text encoder runs once per chunk -> { values, shape [1, 77 k, D] }.
async function encodeText(prompt) {
  return encodePrompt(state.tokenizer, prompt, async (ids) => {
    const t = tf.tensor(ids, [1, ids.length], "int32");
    const out = await run(state.models.text_encoder.model, { token_ids: t });
    const values = await out.context.data();
    t.dispose();
    out.context.dispose();
    return Float32Array.from(values);
  });
}

function tensorMsg(values, shape, dtype) {
  return dtype === "float16"
    ? { dtype: "F16", shape, data: wire.float32ToFloat16(values) }
    : { dtype: "F32", shape, data: Float32Array.from(values) };
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

async function diffuse(tensors, params) {
  const body = wire.encode(tensors);
  const qs = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== null && v !== "" && v !== undefined));
  const r = await fetch(`${API}/api/v1/diffuse?${qs}`, {
    method: "POST", body, headers: { "Content-Type": wire.MEDIA_TYPE, Accept: wire.MEDIA_TYPE },
  });
  const data = new Uint8Array(await r.arrayBuffer());
  if (!r.ok) throw await apiError(r, data);
  const { tensors: out, metadata } = wire.decode(data);
  if (!out.latents) throw new Error("the server's answer has no latents");
  return { latents: out.latents, metadata, sent: body.length, received: data.length };
}

async function decode(latents) {
  const values = wire.asFloat32(latents);
  const t = tf.tensor(values, latents.shape, "float32");
  const out = await run(state.models.decoder.model, { latents: t });
  const [, h, w] = out.images.shape;
  const pixels = Uint8Array.from(await out.images.data()); // uint8 arrives as int32 in TF.js
  t.dispose();
  Object.values(out).forEach((x) => x.dispose());
  return { pixels, h, w };
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
  };
}

async function generate() {
  if (!state.ready || state.busy) return null;
  state.busy = true;
  $("run").disabled = true;
  const s = settings();
  const timings = {};
  try {
    await ensureModels(s.precision, s.vae);
    // the request's LoRAs by the server's rule (edge/web/loras.js): tags out of the prompt; a
    // text-encoder LoRA makes this page's text encoder wrong for it, so the server encodes
    const plan = planLoras(s.prompt, s.negative, pickedLoras(), state.serverInfo);
    const tensors = {};
    const params = { seed: s.seed, steps: s.steps, guidance_scale: s.guidance, scheduler: s.scheduler, dtype: s.dtype };
    if (plan.unet.length) params.loras = asJson(plan.unet);
    let t = performance.now();
    if (plan.encodeOnServer) {
      setStatus("Encoding the prompt on the server (a LoRA changes the text encoder)…", "busy");
      const guided = usesUnconditional(s.guidance, state.manifest);
      const enc = await encodeOnServer(guided ? [plan.text, s.negative] : [plan.text], plan.textEncoder, s.dtype);
      tensors.context = enc.rows[0];
      if (guided) tensors.unconditional_context = enc.rows[1]; // the empty prompt must see the LoRA too
      params.context_loras = asJson(JSON.parse(enc.applied));
    } else {
      setStatus("Encoding the prompt…", "busy");
      const ctx = await encodeText(plan.text);
      tensors.context = tensorMsg(ctx.values, ctx.shape, s.dtype);
      // without a negative prompt the server uses the model's own empty-prompt context; with
      // guidance off (<= 1) or an LCM UNet it reads no unconditional context at all
      if (s.negative && usesUnconditional(s.guidance, state.manifest)) {
        const un = await encodeText(s.negative);
        tensors.unconditional_context = tensorMsg(un.values, un.shape, s.dtype);
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
    }
    setStatus("Diffusing on the server…", "busy");
    t = performance.now();
    const res = await diffuse(tensors, params);
    timings.diffuse = performance.now() - t;
    setStatus("Decoding…", "busy");
    t = performance.now();
    const dec = await decode(res.latents);
    let pixels = dec.pixels;
    if (mask) pixels = pasteBack(image.rgb, pixels, mask, dec.h, dec.w, s.maskBlur);
    timings.decode = performance.now() - t;
    draw($("image"), pixels, dec.h, dec.w);
    $("mask").classList.toggle("faded", Boolean(mask)); // show the result; painting shows the mask again
    const seeds = JSON.parse(res.metadata.seeds || "[]");
    state.last = {
      mode: state.mode, pixels: Array.from(pixels), height: dec.h, width: dec.w, seeds,
      parameters: JSON.parse(res.metadata.parameters || "{}"), sent: res.sent, received: res.received,
      timings, backend: state.backend, mask: mask ? Array.from(mask) : null,
      image: image ? Array.from(image.rgb) : null, modelSources: state.modelSources,
      loras: { unet: plan.unet, textEncoder: plan.textEncoder, encodedOnServer: plan.encodeOnServer },
    };
    $("t-text").textContent = ms(timings.text);
    $("t-image").textContent = timings.image === undefined ? "–" : ms(timings.image);
    $("t-diffuse").textContent = ms(timings.diffuse);
    $("t-decode").textContent = ms(timings.decode);
    $("b-sent").textContent = kb(res.sent);
    $("b-received").textContent = kb(res.received);
    $("out-seed").textContent = seeds.join(", ");
    setStatus("Done.", "done");
    return state.last;
  } catch (e) {
    state.error = String(e.message || e);
    setStatus(`Error: ${state.error}`, "error");
    return null;
  } finally {
    state.busy = false;
    $("run").disabled = false;
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

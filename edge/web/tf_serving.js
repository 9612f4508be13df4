// TF Serving as the page's diffusion server (?tfserving=/v1/models/diffusion): the export's
// compact-tensor signature txt2img_bytes over TF Serving's REST API (edge/tf_serving.py is the
// Python client's twin; exports/diffusion_graph.py the signature). Every float input is one
// {"b64": ...} string of little-endian float16 per row, and latents_bytes comes back the same way.
// What /api/v1/diffuse does on the web app's side the page does here: a seed when none is given,
// both contexts of the same chunk count (app.js encodes them so), the empty prompt's context
// when there is no negative prompt. TF Serving serves the model as exported: no LoRAs, no step
// events, the export's image size.
import * as wire from "./wire.js";

export const MAX_SEED = 2 ** 32 - 1; // as models/pipeline.py

function base64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

function unbase64(text) {
  const raw = atob(text);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

/** {dtype, shape [B, ...], data} -> [{b64}] per row, float16 little-endian. */
export function rowsB64(msg) {
  const bits = msg.dtype === "F16" ? msg.data : wire.float32ToFloat16(wire.asFloat32(msg));
  const per = bits.length / msg.shape[0];
  const out = [];
  for (let k = 0; k < msg.shape[0]; k++) {
    const row = bits.subarray(k * per, (k + 1) * per);
    const bytes = new Uint8Array(row.length * 2);
    for (let i = 0; i < row.length; i++) { bytes[2 * i] = row[i] & 0xff; bytes[2 * i + 1] = row[i] >>> 8; }
    out.push({ b64: base64(bytes) });
  }
  return out;
}

export function randomSeed() {
  return crypto.getRandomValues(new Uint32Array(1))[0];
}

/** The predict body (a JSON string) and the parameters as the web app reports them. */
export function txt2imgRequest(manifest, context, unconditional, params) {
  const batch = context.shape[0];
  const scheduler = params.scheduler || manifest.schedulers[0];
  const index = manifest.schedulers.indexOf(scheduler);
  if (index < 0) throw new Error(`the export serves the schedulers ${manifest.schedulers.join(", ")}, not ${scheduler}`);
  if (unconditional.shape[1] !== context.shape[1]) throw new Error("both contexts must have the same number of chunks");
  const seed = params.seed === null || params.seed === undefined ? randomSeed() : Number(params.seed);
  const rows = (v) => Array.from({ length: batch }, () => v);
  const inputs = {
    context_bytes: rowsB64(context), unconditional_context_bytes: rowsB64(unconditional),
    seed: Array.from({ length: batch }, (_, k) => seed + k), guidance_scale: rows(Number(params.guidance_scale)),
    num_steps: rows(Number(params.steps)), scheduler: rows(index),
  };
  const reported = { steps: Number(params.steps), guidance: Number(params.guidance_scale), seed, scheduler,
    height: manifest.image.height, width: manifest.image.width };
  return { body: JSON.stringify({ signature_name: "txt2img_bytes", inputs }), reported };
}

/** {"outputs": [{"b64"}...]} (or {"outputs": {"latents_bytes": [...]}}) -> {dtype F16, shape, data}. */
export function latentsFromResponse(answer, manifest) {
  let rows = answer.outputs;
  if (rows && !Array.isArray(rows)) rows = rows.latents_bytes;
  if (!Array.isArray(rows) || !rows.every((r) => r && typeof r.b64 === "string")) {
    throw new Error("TF Serving's answer has no latents_bytes output");
  }
  const { height: h, width: w, channels: c } = manifest.latent;
  const per = h * w * c;
  const data = new Uint16Array(rows.length * per);
  rows.forEach((r, k) => {
    const bytes = unbase64(r.b64);
    if (bytes.length !== per * 2) throw new Error(`TF Serving answered ${bytes.length} bytes per image, expected ${per * 2}`);
    for (let i = 0; i < per; i++) data[k * per + i] = bytes[2 * i] | (bytes[2 * i + 1] << 8);
  });
  return { dtype: "F16", shape: [rows.length, h, w, c], data };
}

/** POST {modelUrl}:predict -> {latents, metadata, sent, received, body}, as app.js's diffuse(). */
export async function diffuseOnTFServing(modelUrl, manifest, context, unconditional, params, signal) {
  const { body, reported } = txt2imgRequest(manifest, context, unconditional, params);
  const r = await fetch(`${modelUrl.replace(/\/$/, "")}:predict`, {
    method: "POST", body, signal, headers: { "Content-Type": "application/json" },
  });
  const text = await r.text();
  let answer;
  try { answer = JSON.parse(text); } catch (e) { answer = { error: text.slice(0, 300) }; }
  if (!r.ok) throw new Error(`TF Serving answered ${r.status}: ${answer.error || text.slice(0, 300)}`);
  const latents = latentsFromResponse(answer, manifest);
  const seeds = Array.from({ length: latents.shape[0] }, (_, k) => reported.seed + k);
  const metadata = { seeds: JSON.stringify(seeds), parameters: JSON.stringify(reported) };
  return { latents, metadata, sent: body.length, received: text.length, body: text.length };
}

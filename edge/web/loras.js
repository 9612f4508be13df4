// LoRAs in the browser client: the server's rule for a request's set, in JavaScript.
//
// The page tokenizes prompts itself, so it must take AUTOMATIC1111's <lora:name:scale> tags out
// of the text as the server does (models/lora/prompt_tags.py) and decide the set by the same
// rule (models/chain.py request_loras): the picked LoRAs first, then the prompt's tags; a name
// given again takes the later scale; names looked up exactly, else by the one name that matches
// ignoring case; at most MAX_LORAS, |scale| <= MAX_LORA_SCALE. tests/test_edge_loras_js.py runs
// this file and the Python code on the same cases and compares.
//
// planLoras then says what the page may do: a LoRA that touches only the UNet keeps the exported
// text encoder valid (the page encodes, /diffuse gets `loras`); one that touches the text encoder
// (GET /api/v1/models: edge_parts_valid false) needs the server to encode the prompts with it
// (/api/v1/encode with `loras`), possible only when the server hosts a text encoder.

export const MAX_LORAS = 8;
export const MAX_LORA_SCALE = 10;
export const MAX_LORA_NAME = 200;

export class LoraError extends Error {
  constructor(message, code) {
    super(message);
    this.code = code;
  }
}

const TAG = /<lora:([^<>]*)>/gi;
const OPEN = /<lora:/i;
const NUMBER = /^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$/;
const NO_SPACE_BEFORE = ",.;:!?)]}>\n";
const NO_SPACE_AFTER = "([{<\n";
const rstripBlank = (s) => s.replace(/[ \t]+$/, "");
const lstripBlank = (s) => s.replace(/^[ \t]+/, "");
const show = (v) => JSON.stringify(v);

function parseScale(text, what) {
  const t = text.trim();
  if (!NUMBER.test(t)) throw new LoraError(`${what}: the scale ${show(t)} is not a number (write e.g. 0.8)`, "bad_lora_tag");
  const value = Number(t);
  if (!Number.isFinite(value)) throw new LoraError(`${what}: the scale ${show(t)} is too large`, "bad_lora_tag");
  return value;
}

function tag(body, whole) {
  const i = body.indexOf(":");
  const name = (i < 0 ? body : body.slice(0, i)).trim();
  if (!name) throw new LoraError(`${whole} names no LoRA (write <lora:name> or <lora:name:0.8>)`, "bad_lora_tag");
  if (i < 0) return [name, 1.0];
  const rest = body.slice(i + 1);
  if (rest.includes(":")) {
    throw new LoraError(`${whole}: give one scale (<lora:${name}:0.8>); separate text-encoder and UNet `
      + "multipliers are not supported", "bad_lora_tag");
  }
  return [name, parseScale(rest, whole)];
}

function join(left, right) {
  const l = rstripBlank(left);
  const r = lstripBlank(right);
  const gap = l !== left || r !== right;
  if (!l || !r) return l + r + (gap && l && !r ? " " : "");
  if (NO_SPACE_BEFORE.includes(r[0]) || NO_SPACE_AFTER.includes(l[l.length - 1]) || !gap) return l + r;
  return `${l} ${r}`;
}

// Whether the prompt names a LoRA (complete tag or not), as models.chain checks it.
export const hasLoraTag = (prompt) => OPEN.test(prompt);

// The prompt without its <lora:...> tags, and [[name, scale]] in the order given.
export function parseLoraTags(prompt) {
  const tags = [];
  const pieces = [];
  let pos = 0;
  for (const m of prompt.matchAll(TAG)) {
    pieces.push(prompt.slice(pos, m.index));
    tags.push(tag(m[1], m[0]));
    pos = m.index + m[0].length;
  }
  pieces.push(prompt.slice(pos));
  for (const piece of pieces) {
    const m = OPEN.exec(piece);
    if (m) throw new LoraError(`unclosed LoRA tag ${show(piece.slice(m.index, m.index + 40))}: write <lora:name:0.8>`, "bad_lora_tag");
  }
  if (!tags.length) return { text: prompt, tags };
  let text = pieces[0];
  for (const piece of pieces.slice(1)) text = join(text, piece);
  return { text: pieces[pieces.length - 1].replace(/^[ \t]+|[ \t]+$/g, "") ? text : rstripBlank(text), tags };
}

function checkScale(value, name) {
  if (typeof value !== "number" || !Number.isFinite(value)) {
    throw new LoraError(`LoRA ${show(name)}: the scale must be a finite number, got ${show(value)}`, "bad_lora_scale");
  }
  if (Math.abs(value) > MAX_LORA_SCALE) {
    throw new LoraError(`LoRA ${show(name)}: the scale ${value} is outside -${MAX_LORA_SCALE}..${MAX_LORA_SCALE}`, "bad_lora_scale");
  }
  return value;
}

function entry(item) {
  let name;
  let scale = 1.0;
  if (typeof item === "string") name = item;
  else if (Array.isArray(item) && item.length === 2) [name, scale] = item;
  else if (item && typeof item === "object" && "name" in item
    && Object.keys(item).every((k) => k === "name" || k === "scale")) ({ name, scale = 1.0 } = item);
  else throw new LoraError(`a LoRA is {"name": ..., "scale": ...}, got ${show(item)}`, "bad_loras");
  if (typeof name !== "string" || !name.trim()) throw new LoraError(`a LoRA name must be a non-empty string, got ${show(name)}`, "bad_loras");
  if (name.length > MAX_LORA_NAME) throw new LoraError(`a LoRA name of ${name.length} characters; the limit is ${MAX_LORA_NAME}`, "bad_loras");
  return [name.trim(), checkScale(scale, name)];
}

function lookup(requested, available) {
  const names = Object.keys(available).sort();
  const byLower = new Map();
  for (const n of names) byLower.set(n.toLowerCase(), [...(byLower.get(n.toLowerCase()) || []), n]);
  return requested.map(([name, scale]) => {
    if (Object.prototype.hasOwnProperty.call(available, name)) return [name, scale];
    const folded = byLower.get(name.toLowerCase()) || [];
    if (folded.length === 1) return [folded[0], scale];
    const shown = names.slice(0, 30).join(", ") + (names.length > 30 ? `, ... (${names.length} in all)` : "");
    throw new LoraError(`unknown LoRA ${show(name)}; available: ${shown || "none (no LoRA is loaded)"}`, "unknown_lora");
  });
}

// {text, chosen}: the prompt without tags and [[name, scale]] (null: no LoRA asked for).
export function requestLoras(prompt, negative, loras, available) {
  if (loras != null && !Array.isArray(loras)) throw new LoraError("loras must be a list of {name, scale}", "bad_loras");
  if (loras != null && loras.length > 4 * MAX_LORAS) {
    throw new LoraError(`${loras.length} LoRAs in one request; the limit is ${MAX_LORAS}`, "too_many_loras");
  }
  const explicit = (loras || []).map(entry);
  const { text, tags } = parseLoraTags(prompt);
  if (negative && parseLoraTags(negative).tags.length) {
    throw new LoraError("a <lora:...> tag in the negative prompt: LoRA tags belong in the prompt", "bad_lora_tag");
  }
  if (loras == null && !tags.length) return { text, chosen: null };
  const scales = new Map();
  for (const [name, scale] of [...explicit, ...tags.map(([n, s]) => [n, checkScale(s, n)])]) scales.set(name, scale);
  const folded = new Map();
  for (const [name, scale] of lookup([...scales.entries()], available || {})) folded.set(name, scale);
  if (folded.size > MAX_LORAS) throw new LoraError(`${folded.size} LoRAs in one request; the limit is ${MAX_LORAS}`, "too_many_loras");
  return { text, chosen: [...folded.entries()] };
}

const networks = (name, available) => (available[name] && available[name].networks) || [];

// What the page does with a request's set: {text, unet, textEncoder, encodeOnServer}. `info` is
// the server's GET /api/v1/models. Throws when a text-encoder LoRA is asked of a server that
// cannot encode (it hosts no text encoder).
export function planLoras(prompt, negative, picked, info) {
  const available = (info && info.loras) || {};
  const { text, chosen } = requestLoras(prompt, negative, picked && picked.length ? picked : null, available);
  const unet = (chosen || []).filter(([n]) => networks(n, available).includes("unet"));
  const textEncoder = (chosen || []).filter(([n]) => networks(n, available).includes("text_encoder"));
  if (textEncoder.length && !((info && info.loaded_networks) || []).includes("text_encoder")) {
    throw new LoraError(`the LoRA(s) ${textEncoder.map(([n]) => n).join(", ")} change the text encoder, so this `
      + "page's exported text encoder cannot encode for them, and this server hosts no text encoder to do it; "
      + "pick LoRAs that keep the edge parts valid", "lora_needs_server_text_encoder");
  }
  return { text, unet, textEncoder, encodeOnServer: textEncoder.length > 0 };
}

export const asJson = (loras) => JSON.stringify(loras.map(([name, scale]) => ({ name, scale })));

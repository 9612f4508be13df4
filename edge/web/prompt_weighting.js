// AUTOMATIC1111's prompt syntax (emphasis, 75-token chunks, BREAK) for the browser client: a
// port of models/prompt_weighting.py, the server's rule, tested against it on a corpus of
// prompts (tests/test_edge_prompt_weighting.py). Read that file's docstring for the rule; this
// one follows it step by step so that the parsed weights are the same doubles and the chunks
// the same ids.
//
//   parse(text)                    -> [[text, weight]], BREAK as [null, null]
//   chunkPrompt(tokenizer, text)   -> { ids: [Int32Array(77)], weights: [Float32Array(77)], tokenCount }
//   applyWeights(z, weights, dim)  -> one chunk's encoder output [77 * dim] weighted and mean-rescaled
//   tokenLabel(tokenizer, text)    -> "80/150 tokens, 2 chunks"

import { parseLoraTags } from "./loras.js";

export const CHUNK_TOKENS = 75;
export const COMMA_BACKTRACK = 20;
export const MAX_CHUNKS = 32;
export const MAX_WEIGHT = 100;
export const MEAN_FLOOR = 1e-3;
const ROUND = 1.1;
const SQUARE = 1 / 1.1;

export class PromptError extends Error {
  constructor(message, code) {
    super(message);
    this.code = code;
  }
}

// Python's str whitespace and \w, spelled out (models/prompt_weighting.py SPACE)
const SPACE = "[ \\t\\n\\r\\f\\v\\x1c-\\x1f\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";
const SYNTAX = new RegExp(
  `\\\\[()\\[\\]\\\\]|\\\\|\\(|\\[|:${SPACE}*([+-]?[.0-9]+)${SPACE}*\\)|\\)|\\]|[^\\\\()\\[\\]:]+|:`, "gu");
const BREAK = new RegExp(`${SPACE}*(?<![\\p{L}\\p{N}_])BREAK(?![\\p{L}\\p{N}_])${SPACE}*`, "u");

function number(text) {
  // Python's float() on [+-]?[.0-9]+: "1." and ".5" are numbers, "1.2.3" and "." are not
  if (!/^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)$/.test(text)) {
    throw new PromptError(`the emphasis weight '${text}' is not a number (write e.g. (word:1.3))`, "bad_prompt_weight");
  }
  return Number(text);
}

export function parse(text) {
  const pieces = [];
  const rounds = [];
  const squares = [];
  const multiply = (start, factor) => {
    for (let i = start; i < pieces.length; i++) if (pieces[i][0] !== null) pieces[i][1] *= factor;
  };
  for (const m of text.matchAll(SYNTAX)) {
    const token = m[0];
    const weight = m[1];
    if (token.startsWith("\\")) pieces.push([token.slice(1), 1.0]);
    else if (token === "(") rounds.push(pieces.length);
    else if (token === "[") squares.push(pieces.length);
    else if (weight !== undefined && rounds.length) multiply(rounds.pop(), number(weight));
    else if (token === ")" && rounds.length) multiply(rounds.pop(), ROUND);
    else if (token === "]" && squares.length) multiply(squares.pop(), SQUARE);
    else {
      token.split(BREAK).forEach((part, k) => {
        if (k) pieces.push([null, null]);
        pieces.push([part, 1.0]);
      });
    }
  }
  for (const start of rounds) multiply(start, ROUND);
  for (const start of squares) multiply(start, SQUARE);
  const merged = [];
  for (const piece of pieces) {
    const last = merged[merged.length - 1];
    if (piece[0] === null) merged.push(piece);
    else if (!piece[0]) continue;
    else if (last && last[0] !== null && last[1] === piece[1]) last[0] += piece[0];
    else merged.push(piece);
  }
  for (const [, w] of merged) {
    if (w !== null && !(Math.abs(w) <= MAX_WEIGHT)) {
      throw new PromptError(`an emphasis weight of ${w.toPrecision(4)}: the limit is ${MAX_WEIGHT} (too many nested brackets?)`,
        "bad_prompt_weight");
    }
  }
  return merged.length ? merged : [["", 1.0]];
}

function row(tokenizer, tokens) {
  const ids = new Int32Array(tokenizer.maxLength).fill(tokenizer.padId);
  ids.set([tokenizer.startId, ...tokens, tokenizer.endId]);
  return ids;
}

export function emptyChunk(tokenizer) {
  return { ids: row(tokenizer, []), weights: new Float32Array(tokenizer.maxLength).fill(1) };
}

export function chunkPrompt(tokenizer, text, maxChunks = MAX_CHUNKS) {
  const size = tokenizer.maxLength - 2;
  const comma = tokenizer.encoder.get(",</w>");
  const ids = [];
  const weights = [];
  let tokens = [];
  let ws = [];
  let count = 0;
  let lastComma = -1;
  const close = () => {
    if (ids.length >= maxChunks) {
      throw new PromptError(`the prompt needs more than ${maxChunks} chunks of ${size} tokens; the limit is `
        + `${maxChunks} (${maxChunks * size} tokens)`, "prompt_too_long");
    }
    count += tokens.length;
    ids.push(row(tokenizer, tokens));
    const w = new Float32Array(tokenizer.maxLength).fill(1);
    w.set(ws, 1);
    weights.push(w);
    tokens = [];
    ws = [];
    lastComma = -1;
  };
  for (const [piece, weight] of parse(text)) {
    if (piece === null) { close(); continue; }
    for (const token of tokenizer.encode(piece)) {
      if (token === comma) lastComma = tokens.length;
      else if (tokens.length === size && lastComma !== -1 && tokens.length - lastComma <= COMMA_BACKTRACK) {
        const cut = lastComma + 1;
        const moved = tokens.slice(cut);
        const movedW = ws.slice(cut);
        tokens = tokens.slice(0, cut);
        ws = ws.slice(0, cut);
        close();
        tokens = moved;
        ws = movedW;
      }
      if (tokens.length === size) close();
      tokens.push(token);
      ws.push(weight);
    }
  }
  if (tokens.length || !ids.length) close();
  return { ids, weights, tokenCount: count };
}

/** z: one chunk's encoder output, Float32Array [77 * dim]; weights Float32Array [77]. */
export function applyWeights(z, weights, dim) {
  if (weights.every((w) => w === 1)) return z;
  let before = 0;
  let size = 0;
  for (let i = 0; i < z.length; i++) { before += z[i]; size += Math.abs(z[i]); }
  const out = new Float32Array(z.length);
  let after = 0;
  for (let t = 0; t < weights.length; t++) {
    for (let d = 0; d < dim; d++) {
      const i = t * dim + d;
      out[i] = z[i] * weights[t];
      after += out[i];
    }
  }
  const floor = MEAN_FLOOR * size; // sums, not means: the same test as Python's
  if (Math.abs(before) <= floor || Math.abs(after) <= floor) return out;
  const scale = Math.fround(before / after);
  for (let i = 0; i < out.length; i++) out[i] = out[i] * scale;
  return out;
}

/**
 * prompt -> { values: Float32Array [77 k * dim], shape: [1, 77 k, dim], chunks }: `encodeIds(ids)`
 * runs the 77-token text encoder on one chunk (Int32Array(77)) and resolves to Float32Array [77 * dim].
 */
export async function encodePrompt(tokenizer, text, encodeIds, minChunks = 1) {
  const parts = chunkPrompt(tokenizer, text);
  while (parts.ids.length < minChunks) {
    const e = emptyChunk(tokenizer);
    parts.ids.push(e.ids);
    parts.weights.push(e.weights);
  }
  const rows = [];
  for (let k = 0; k < parts.ids.length; k++) rows.push(await encodeIds(parts.ids[k]));
  const T = tokenizer.maxLength;
  const dim = rows[0].length / T;
  const values = new Float32Array(rows.length * T * dim);
  rows.forEach((z, k) => values.set(applyWeights(z, parts.weights[k], dim), k * T * dim));
  return { values, shape: [1, rows.length * T, dim], chunks: rows.length, tokenCount: parts.tokenCount };
}

export function tokenLabel(tokenizer, text, maxChunks = MAX_CHUNKS) {
  const size = tokenizer.maxLength - 2;
  try {
    const parts = chunkPrompt(tokenizer, parseLoraTags(text).text, maxChunks);
    const k = parts.ids.length;
    return `${parts.tokenCount}/${size * k} tokens` + (k > 1 ? `, ${k} chunks` : "");
  } catch (e) {
    return String(e.message || e);
  }
}

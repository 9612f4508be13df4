// CLIP byte-level BPE tokenizer: the same ids as models/tokenizer.py (checked on a fixture of
// prompts by edge/tests/tokenizer.test.mjs). It reads the files the exporter writes
// (tokenizer/vocab.json, merges.txt, tokenizer_config.json) and works in browsers and Node.
//
// Text cleaning mirrors the Python side: ftfy.fix_text (HTML entities, C1 controls, Latin
// ligatures, full/half width forms, curly quotes, line breaks, surrogates, terminal escapes,
// control characters, NFC), html.unescape twice, whitespace collapsed, lowercased. Not
// mirrored: ftfy's mojibake repair (text that is UTF-8 decoded as Windows-1252, e.g. "cafÃ©"),
// which plain typed prompts never contain.

import { HTML5, INVALID_CHARREFS, INVALID_CODEPOINTS } from "./text_tables.js";

const START_TOKEN = "<|startoftext|>";
const END_TOKEN = "<|endoftext|>";
const EOW = "</w>";
// Python's `regex` \s (Unicode White_Space) and str.isspace (adds U+1C..U+1F).
const WS = "\\t\\n\\v\\f\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const SPACES = new RegExp(`[${WS}]+`, "gu");
const STRIP = new RegExp(`^[${WS}\\x1c-\\x1f]+|[${WS}\\x1c-\\x1f]+$`, "gu");
const SPLIT = new RegExp(
  `<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^${WS}\\p{L}\\p{N}]+`,
  "giu",
);

// ---- ftfy.fix_text, the table-driven fixers -------------------------------------------------
const CP1252 = {
  0x80: "\u20ac", 0x82: "\u201a", 0x83: "\u0192", 0x84: "\u201e", 0x85: "\u2026", 0x86: "\u2020",
  0x87: "\u2021", 0x88: "\u02c6", 0x89: "\u2030", 0x8a: "\u0160", 0x8b: "\u2039", 0x8c: "\u0152",
  0x8e: "\u017d", 0x91: "\u2018", 0x92: "\u2019", 0x93: "\u201c", 0x94: "\u201d", 0x95: "\u2022",
  0x96: "\u2013", 0x97: "\u2014", 0x98: "\u02dc", 0x99: "\u2122", 0x9a: "\u0161", 0x9b: "\u203a",
  0x9c: "\u0153", 0x9e: "\u017e", 0x9f: "\u0178",
};
const LIGATURES = {
  "\u0132": "IJ", "\u0133": "ij", "\u0149": "\u02bcn", "\u01f1": "DZ", "\u01f2": "Dz", "\u01f3": "dz",
  "\u01c4": "D\u017d", "\u01c5": "D\u017e", "\u01c6": "d\u017e", "\u01c7": "LJ", "\u01c8": "Lj",
  "\u01c9": "lj", "\u01ca": "NJ", "\u01cb": "Nj", "\u01cc": "nj", "\ufb00": "ff", "\ufb01": "fi",
  "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl", "\ufb05": "\u017ft", "\ufb06": "st",
};
const CONTROL_RE = /[\x00-\x08\x0b\x0e-\x1f\x7f\u206a-\u206f\ufeff\ufff9-\ufffc]/g;
const ANSI_RE = /\x1b\[((?:\p{Nd}|;)*)([a-zA-Z])/gu;
const ENTITY_RE = /&#?[0-9A-Za-z]{1,24};/g;
const CHARREF_RE = /&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)/g;

// Python's html.unescape.
function replaceCharref(s) {
  if (s[0] === "#") {
    const num = s[1] === "x" || s[1] === "X"
      ? parseInt(s.slice(2).replace(/;$/, ""), 16) : parseInt(s.slice(1).replace(/;$/, ""), 10);
    if (Object.prototype.hasOwnProperty.call(INVALID_CHARREFS, String(num))) return INVALID_CHARREFS[String(num)];
    if ((num >= 0xd800 && num <= 0xdfff) || num > 0x10ffff) return "\ufffd";
    if (INVALID_CODEPOINTS.has(num)) return "";
    return String.fromCodePoint(num);
  }
  if (Object.prototype.hasOwnProperty.call(HTML5, s)) return HTML5[s];
  for (let x = s.length - 1; x > 1; x--) {
    const head = s.slice(0, x);
    if (Object.prototype.hasOwnProperty.call(HTML5, head)) return HTML5[head] + s.slice(x);
  }
  return "&" + s;
}
export function htmlUnescape(text) {
  if (!text.includes("&")) return text;
  return text.replace(CHARREF_RE, (_, s) => replaceCharref(s));
}

// ftfy's entity table: HTML5 names ending in ';', plus all-caps forms of lowercase names that
// html.unescape would leave alone (so "&EACUTE;" reads as "É").
let FTFY_ENTITIES = null;
function ftfyEntities() {
  if (FTFY_ENTITIES) return FTFY_ENTITIES;
  FTFY_ENTITIES = new Map();
  for (const [name, ch] of Object.entries(HTML5)) {
    if (!name.endsWith(";")) continue;
    FTFY_ENTITIES.set("&" + name, ch);
    if (name === name.toLowerCase()) {
      const upper = "&" + name.toUpperCase();
      if (htmlUnescape(upper) === upper) FTFY_ENTITIES.set(upper, ch.toUpperCase());
    }
  }
  return FTFY_ENTITIES;
}
function ftfyUnescape(text) {
  const table = ftfyEntities();
  return text.replace(ENTITY_RE, (m) => {
    if (table.has(m)) return table.get(m);
    if (m.startsWith("&#")) {
      const u = htmlUnescape(m);
      return u.includes(";") ? m : u;
    }
    return m;
  });
}

function fixWidth(text) {
  return text.replace(/[\u3000\uff01-\uffef]/g, (c) => {
    if (c === "\u3000") return " ";
    const alt = c.normalize("NFKC");
    return alt;
  });
}

function fixSegment(text, unescape) {
  for (;;) {
    const orig = text;
    if (unescape) text = ftfyUnescape(text);
    text = text.replace(/[\x80-\x9f]/g, (c) => CP1252[c.charCodeAt(0)] ?? c);
    text = text.replace(/[\u0132\u0133\u0149\u01f1-\u01f3\u01c4-\u01cc\ufb00-\ufb06]/g, (c) => LIGATURES[c] ?? c);
    text = fixWidth(text);
    text = text.replace(/[\u201c-\u201f]/g, '"').replace(/[\u02bc\u2018-\u201b]/g, "'");
    text = text.replace(/\r\n/g, "\n").replace(/[\r\u2028\u2029\x85]/g, "\n");
    text = text.replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, "\ufffd");
    text = text.replace(ANSI_RE, "");
    text = text.replace(CONTROL_RE, "");
    text = text.normalize("NFC");
    if (text === orig) return text;
  }
}

export function fixText(text) {
  // ftfy works line by line; once a line holds '<' it stops unescaping entities (HTML-ish).
  let out = "";
  let unescape = true;
  let pos = 0;
  while (pos < text.length) {
    let brk = text.indexOf("\n", pos) + 1;
    if (brk === 0) brk = text.length;
    const segment = text.slice(pos, brk);
    if (segment.includes("<")) unescape = false;
    out += fixSegment(segment, unescape);
    pos = brk;
  }
  return out;
}

export function cleanText(text) {
  text = htmlUnescape(htmlUnescape(fixText(text)));
  return text.replace(SPACES, " ").replace(STRIP, "").toLowerCase();
}

// ---- byte-level BPE -------------------------------------------------------------------------
function bytesToUnicode() {
  const printable = [];
  for (let b = 0x21; b <= 0x7e; b++) printable.push(b);
  for (let b = 0xa1; b <= 0xac; b++) printable.push(b);
  for (let b = 0xae; b <= 0xff; b++) printable.push(b);
  const map = new Array(256);
  for (const b of printable) map[b] = String.fromCodePoint(b);
  let n = 0;
  for (let b = 0; b < 256; b++) if (map[b] === undefined) map[b] = String.fromCodePoint(256 + n++);
  return map;
}
const BYTE_ENCODER = bytesToUnicode();
const UTF8 = new TextEncoder();

export class CLIPTokenizer {
  /** vocab: {token: id}; merges: merges.txt text (or list of lines); config: tokenizer_config.json. */
  constructor(vocab, merges, config = {}) {
    this.encoder = new Map(Object.entries(vocab));
    this.decoder = new Map([...this.encoder].map(([k, v]) => [v, k]));
    const lines = Array.isArray(merges) ? merges : merges.split("\n");
    this.ranks = new Map();
    for (const line of lines) {
      if (!line || line.startsWith("#version")) continue;
      this.ranks.set(line, this.ranks.size);
    }
    const tokenText = (t) => (t && typeof t === "object" ? t.content : t);
    const pad = tokenText(config.pad_token) || END_TOKEN;
    if (!this.encoder.has(pad)) throw new Error(`pad token ${pad} is not in the vocabulary`);
    let maxLength = config.model_max_length ?? 77;
    if (!Number.isInteger(maxLength) || maxLength > 4096) maxLength = 77;
    this.maxLength = maxLength;
    this.startId = this.encoder.get(START_TOKEN);
    this.endId = this.encoder.get(END_TOKEN);
    this.padId = this.encoder.get(pad);
    this.vocabSize = this.encoder.size;
    this.cache = new Map();
  }

  /** Loads from a folder URL (browser: "/exports/tfjs/tokenizer/") or with a custom reader. */
  static async load(base, read = null) {
    const get = read || (async (name) => {
      const r = await fetch(new URL(name, new URL(base, globalThis.location?.href)));
      if (!r.ok) throw new Error(`GET ${name}: ${r.status}`);
      return r.text();
    });
    const [vocab, merges, config] = await Promise.all(
      ["vocab.json", "merges.txt", "tokenizer_config.json"].map((n) => get(n)));
    return new CLIPTokenizer(JSON.parse(vocab), merges, JSON.parse(config));
  }

  bpe(word) {
    const cached = this.cache.get(word);
    if (cached) return cached;
    const chars = Array.from(word);
    let parts = chars.slice(0, -1);
    parts.push(chars[chars.length - 1] + EOW);
    while (parts.length > 1) {
      let best = null;
      let bestRank = Infinity;
      for (let i = 0; i < parts.length - 1; i++) {
        const r = this.ranks.get(parts[i] + " " + parts[i + 1]);
        if (r !== undefined && r < bestRank) { bestRank = r; best = [parts[i], parts[i + 1]]; }
      }
      if (best === null) break;
      const merged = [];
      for (let i = 0; i < parts.length;) {
        if (i + 1 < parts.length && parts[i] === best[0] && parts[i + 1] === best[1]) {
          merged.push(parts[i] + parts[i + 1]);
          i += 2;
        } else {
          merged.push(parts[i]);
          i += 1;
        }
      }
      parts = merged;
    }
    if (this.cache.size > 100000) this.cache.clear();
    this.cache.set(word, parts);
    return parts;
  }

  /** Token ids of a prompt, without start/end tokens or truncation. */
  encode(text) {
    const ids = [];
    for (const m of cleanText(text).matchAll(SPLIT)) {
      const piece = m[0];
      if (piece === START_TOKEN || piece === END_TOKEN) { ids.push(this.encoder.get(piece)); continue; }
      let word = "";
      for (const b of UTF8.encode(piece)) word += BYTE_ENCODER[b];
      for (const p of this.bpe(word)) ids.push(this.encoder.get(p));
    }
    return ids;
  }

  countTokens(text) { return this.encode(text).length; }

  /** One prompt -> Int32Array(maxLength): start, up to maxLength-2 ids, end, padding. */
  tokenize(text) {
    const ids = this.encode(text).slice(0, this.maxLength - 2);
    const out = new Int32Array(this.maxLength).fill(this.padId);
    out.set([this.startId, ...ids, this.endId]);
    return out;
  }
}

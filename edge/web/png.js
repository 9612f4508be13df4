// A downloaded image carries its generation parameters, as the main UI's and the REST API's PNGs
// do: the "parameters" text chunk in AUTOMATIC1111's layout (models/png_info.py). The server
// sends each row's "Steps: ..., Seed: ..." line (/diffuse metadata infotext_fields), written by
// the same function as its own PNGs; only the prompt lines are added here, since only this page
// knows the prompt (tests/test_edge_page.py checks the text equals the API's for one request).

export const KEY = "parameters";

/** models.png_info.format_parameters' layout: prompt, "Negative prompt: ..." if any, the fields line. */
export function infotext(prompt, negative, fields) {
  const lines = [String(prompt)];
  if (negative) lines.push(`Negative prompt: ${negative}`);
  lines.push(fields);
  return lines.join("\n");
}

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type, data) {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  out.set(new TextEncoder().encode(type), 4);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

/** The text chunk: tEXt (Latin-1) when every character fits, else iTXt (UTF-8), as Pillow writes. */
export function textChunk(key, text) {
  const latin1 = [...text].every((ch) => ch.codePointAt(0) <= 0xff);
  if (latin1) {
    const data = Uint8Array.from([...`${key}\0${text}`].map((ch) => ch.codePointAt(0)));
    return chunk("tEXt", data);
  }
  const head = new TextEncoder().encode(`${key}\0\0\0\0\0`); // no compression, no language, no translated key
  const body = new TextEncoder().encode(text);
  const data = new Uint8Array(head.length + body.length);
  data.set(head);
  data.set(body, head.length);
  return chunk("iTXt", data);
}

/** PNG bytes with the text chunk inserted right after IHDR. */
export function withText(png, key, text) {
  const bytes = new Uint8Array(png);
  const signature = [137, 80, 78, 71, 13, 10, 26, 10];
  if (!signature.every((b, i) => bytes[i] === b)) throw new Error("not a PNG");
  const ihdrEnd = 8 + 12 + new DataView(bytes.buffer, bytes.byteOffset).getUint32(8);
  const extra = textChunk(key, text);
  const out = new Uint8Array(bytes.length + extra.length);
  out.set(bytes.subarray(0, ihdrEnd));
  out.set(extra, ihdrEnd);
  out.set(bytes.subarray(ihdrEnd), ihdrEnd + extra.length);
  return out;
}

// The binary tensor format of /api/v1/diffuse (webapp/wire.py): the safetensors layout.
//   uint64 LE header length N | N bytes of JSON {name: {dtype, shape, data_offsets}, "__metadata__": {}}
//   | raw little-endian tensor data (offsets relative to the end of the header)
// Media type application/x-safetensors. Tensors here are {dtype: "F16"|"F32"|"U8"|"I32", shape, data}
// with data a Uint16Array (F16 bits), Float32Array, Uint8Array or Int32Array.

export const MEDIA_TYPE = "application/x-safetensors";
const ITEM = { F16: 2, F32: 4, U8: 1, I32: 4 };
const ARRAYS = { F16: Uint16Array, F32: Float32Array, U8: Uint8Array, I32: Int32Array };
const LITTLE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

// ---- float16 <-> float32 (round to nearest even, as numpy's astype) -----------------------------
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function toFloat16Bits(x) {
  f32[0] = x;
  const b = u32[0];
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  let mant = b & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0); // inf / nan
  let e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00; // overflow -> inf
  if (e <= 0) { // subnormal half (or zero)
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && (half & 1))) half += 1;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (half & 1))) half += 1; // may carry into the exponent: correct
  return sign | half;
}

export function fromFloat16Bits(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

export function float32ToFloat16(arr) {
  const out = new Uint16Array(arr.length);
  for (let i = 0; i < arr.length; i++) out[i] = toFloat16Bits(arr[i]);
  return out;
}

export function float16ToFloat32(bits) {
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = fromFloat16Bits(bits[i]);
  return out;
}

/** A tensor's values as a Float32Array (F16 widened); other dtypes returned as they are. */
export function asFloat32(t) {
  if (t.dtype === "F16") return float16ToFloat32(t.data);
  if (t.dtype === "F32") return t.data;
  return Float32Array.from(t.data);
}

function bytesOf(t) {
  const n = t.shape.reduce((a, b) => a * b, 1);
  if (t.data.length !== n) throw new Error(`tensor of shape [${t.shape}] needs ${n} values, got ${t.data.length}`);
  const view = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  if (LITTLE || ITEM[t.dtype] === 1) return view;
  const out = new Uint8Array(view.length); // big-endian host: swap to little-endian
  const k = ITEM[t.dtype];
  for (let i = 0; i < view.length; i += k) for (let j = 0; j < k; j++) out[i + j] = view[i + k - 1 - j];
  return out;
}

/** {name: {dtype, shape, data}} (+ string metadata) -> Uint8Array. */
export function encode(tensors, metadata = null) {
  const header = {};
  const chunks = [];
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    if (!(t.dtype in ITEM)) throw new Error(`tensor ${name}: dtype ${t.dtype} is not one of F16, F32, U8, I32`);
    const bytes = bytesOf(t);
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes.length] };
    chunks.push(bytes);
    offset += bytes.length;
  }
  if (metadata) {
    header.__metadata__ = Object.fromEntries(Object.entries(metadata).map(
      ([k, v]) => [k, typeof v === "string" ? v : JSON.stringify(v)]));
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  const pad = (8 - (json.length % 8)) % 8;
  if (pad) {
    const padded = new Uint8Array(json.length + pad).fill(0x20);
    padded.set(json);
    json = padded;
  }
  const out = new Uint8Array(8 + json.length + offset);
  const dv = new DataView(out.buffer);
  dv.setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  let pos = 8 + json.length;
  for (const c of chunks) { out.set(c, pos); pos += c.length; }
  return out;
}

/** ArrayBuffer | Uint8Array -> {tensors: {name: {dtype, shape, data}}, metadata}. */
export function decode(body) {
  // A plain Uint8Array view (Node's Buffer.slice would not copy, and copies keep typed arrays aligned).
  const bytes = ArrayBuffer.isView(body) ? new Uint8Array(body.buffer, body.byteOffset, body.byteLength)
    : new Uint8Array(body);
  if (bytes.length < 8) throw new Error(`tensor message too short (${bytes.length} bytes)`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = Number(dv.getBigUint64(0, true));
  if (8 + n > bytes.length) throw new Error(`header length ${n} exceeds the message`);
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  const metadata = header.__metadata__ || {};
  delete header.__metadata__;
  const base = 8 + n;
  const tensors = {};
  for (const [name, spec] of Object.entries(header)) {
    const Arr = ARRAYS[spec.dtype];
    if (!Arr) throw new Error(`tensor ${name}: unknown dtype ${spec.dtype}`);
    const [b, e] = spec.data_offsets;
    const count = spec.shape.reduce((x, y) => x * y, 1);
    if (e - b !== count * ITEM[spec.dtype] || base + e > bytes.length) {
      throw new Error(`tensor ${name}: data_offsets ${spec.data_offsets} do not fit shape [${spec.shape}]`);
    }
    const copy = bytes.slice(base + b, base + e); // copy: aligned for the typed array
    if (!LITTLE && ITEM[spec.dtype] > 1) {
      const k = ITEM[spec.dtype];
      for (let i = 0; i < copy.length; i += k) copy.subarray(i, i + k).reverse();
    }
    tensors[name] = { dtype: spec.dtype, shape: spec.shape, data: new Arr(copy.buffer) };
  }
  return { tensors, metadata };
}

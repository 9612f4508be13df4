// The inpainting mask rule of models/masks.py, so the page's inpainting result is the all-in-one
// API's: a mask value >= 128 (of 255) repaints; m = blur(that); keep = 1 - m;
// out = round(keep * image + (1 - keep) * decoded).

/** The same threshold as models/masks.py REPAINT_FROM. */
export const REPAINT_FROM = 128;

/** Grey-level mask values [n] -> 255 where they repaint, else 0. */
export function repaintMask(values) {
  return Uint8Array.from(values, (v) => (v >= REPAINT_FROM ? 255 : 0));
}

/** Separable Gaussian blur of a [h, w] mask, sigma = radius / 2, edges clamped (numpy's). */
export function gaussianBlur(mask, h, w, radius) {
  if (radius <= 0) return Float32Array.from(mask);
  const sigma = radius / 2;
  const r = Math.ceil(3 * sigma);
  const k = [];
  let sum = 0;
  for (let i = -r; i <= r; i++) { const v = Math.exp(-0.5 * (i / sigma) ** 2); k.push(v); sum += v; }
  for (let i = 0; i < k.length; i++) k[i] /= sum;
  const clamp = (v, n) => (v < 0 ? 0 : v >= n ? n - 1 : v);
  const rows = new Float64Array(h * w);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      let acc = 0;
      for (let j = -r; j <= r; j++) acc += mask[y * w + clamp(x + j, w)] * k[r - j];
      rows[y * w + x] = acc;
    }
  }
  const out = new Float32Array(h * w);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      let acc = 0;
      for (let j = -r; j <= r; j++) acc += rows[clamp(y + j, h) * w + x] * k[r - j];
      out[y * w + x] = acc;
    }
  }
  return out;
}

function roundHalfEven(v) {
  const f = Math.floor(v);
  const d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** image, decoded: RGB bytes [h*w*3]; mask: [h*w] grey levels (the rule above). Returns RGB bytes. */
export function pasteBack(image, decoded, mask, h, w, blur) {
  const binary = Float32Array.from(mask, (v) => (v >= REPAINT_FROM ? 1 : 0));
  const soft = gaussianBlur(binary, h, w, blur);
  const out = new Uint8Array(h * w * 3);
  for (let p = 0; p < h * w; p++) {
    const keep = Math.fround(1 - soft[p]);
    for (let c = 0; c < 3; c++) {
      const i = p * 3 + c;
      const v = Math.fround(Math.fround(keep * image[i]) + Math.fround(Math.fround(1 - keep) * decoded[i]));
      out[i] = Math.min(255, Math.max(0, roundHalfEven(v)));
    }
  }
  return out;
}

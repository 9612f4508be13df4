// TensorFlow.js backend selection: the first that initialises of webgpu, webgl, wasm, cpu.
// `tf` is the global the UMD bundles in index.html define (served from node_modules).
// A WebGL that is only a software rasteriser (SwiftShader, llvmpipe: a machine without a GPU
// or with GPU access disabled) is skipped for wasm, which is 5-20x faster there
// (bench/tfjs_browser.py); `?backend=webgl` still forces it.

export const ORDER = ["webgpu", "webgl", "wasm", "cpu"];

export async function selectBackend(tf, order = ORDER) {
  const tried = [];
  if (tf.wasm && tf.wasm.setWasmPaths) {
    // The .wasm files sit beside the bundle in node_modules (no CDN).
    tf.wasm.setWasmPaths(new URL("node_modules/@tensorflow/tfjs-backend-wasm/dist/", import.meta.url).href);
  }
  const software = order.length > 1 && softwareWebGL();
  for (const name of order) {
    if (!tf.findBackendFactory(name)) { tried.push(`${name}: not bundled`); continue; }
    if (name === "webgl" && software && order.includes("wasm") && tf.findBackendFactory("wasm")) {
      tried.push(`webgl: software renderer (${software}), wasm is faster`);
      continue;
    }
    try {
      if (await tf.setBackend(name)) {
        await tf.ready();
        return { name, tried };
      }
      tried.push(`${name}: unavailable`);
    } catch (e) {
      tried.push(`${name}: ${e.message || e}`);
    }
  }
  throw new Error(`no TensorFlow.js backend initialised (${tried.join("; ")})`);
}

// The WebGL renderer's name when it is a software rasteriser, else "".
export function softwareWebGL() {
  try {
    const gl = document.createElement("canvas").getContext("webgl");
    if (!gl) return "";
    const info = gl.getExtension("WEBGL_debug_renderer_info");
    const renderer = String(gl.getParameter(info ? info.UNMASKED_RENDERER_WEBGL : gl.RENDERER));
    return /swiftshader|llvmpipe|software/i.test(renderer) ? renderer : "";
  } catch (e) {
    return "";
  }
}

// TensorFlow.js backend selection: the first that initialises of webgpu, webgl, wasm, cpu.
// `tf` is the global the UMD bundles in index.html define (served from node_modules).

export const ORDER = ["webgpu", "webgl", "wasm", "cpu"];

export async function selectBackend(tf, order = ORDER) {
  const tried = [];
  if (tf.wasm && tf.wasm.setWasmPaths) {
    // The .wasm files sit beside the bundle in node_modules (no CDN).
    tf.wasm.setWasmPaths(new URL("node_modules/@tensorflow/tfjs-backend-wasm/dist/", import.meta.url).href);
  }
  for (const name of order) {
    if (!tf.findBackendFactory(name)) { tried.push(`${name}: not bundled`); continue; }
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

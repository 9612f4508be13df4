// Times exported TF.js graph models in the browser; driven by bench/tfjs_browser.py through
// Playwright (page.evaluate). `tf` is the UMD global from tf.min.js; the wasm backend's files
// are served beside its bundle.

function webglRenderer() {
  try {
    const gl = document.createElement("canvas").getContext("webgl2") ||
      document.createElement("canvas").getContext("webgl");
    if (!gl) return null;
    const ext = gl.getExtension("WEBGL_debug_renderer_info");
    return ext ? gl.getParameter(ext.UNMASKED_RENDERER_WEBGL) : gl.getParameter(gl.RENDERER);
  } catch (e) {
    return null;
  }
}

// "default": whatever TF.js picks by itself (its highest-priority backend that initialises).
window.benchSetup = async function (requested) {
  if (tf.wasm && tf.wasm.setWasmPaths) tf.wasm.setWasmPaths(new URL("../tf/tfjs-backend-wasm/dist/", location.href).href);
  const info = { requested, registered: Object.keys(tf.engine().registryFactory) };
  // wasm: one thread per core when the page is cross-origin isolated (set before it starts)
  if (requested === "wasm" && tf.wasm && tf.wasm.setThreadsCount && self.crossOriginIsolated) {
    tf.wasm.setThreadsCount(navigator.hardwareConcurrency || 1);
  }
  try {
    if (requested !== "default") {
      if (!(await tf.setBackend(requested))) throw new Error(`${requested} did not initialise`);
    }
    await tf.ready();
  } catch (e) {
    info.error = String(e.message || e);
    return info;
  }
  info.backend = tf.getBackend();
  info.tfjs_version = tf.version.tfjs;
  info.cross_origin_isolated = self.crossOriginIsolated === true;
  info.hardware_concurrency = navigator.hardwareConcurrency;
  if (info.backend === "webgl") {
    info.webgl_version = tf.env().getNumber("WEBGL_VERSION");
    info.renderer = webglRenderer();
  }
  if (info.backend === "wasm") {
    info.wasm_simd = await tf.env().getAsync("WASM_HAS_SIMD_SUPPORT");
    info.wasm_threads = await tf.env().getAsync("WASM_HAS_MULTITHREAD_SUPPORT");
    try { info.wasm_thread_count = tf.wasm.getThreadsCount(); } catch (e) { /* older versions */ }
  }
  return info;
};

function makeTensor(spec) {
  const size = spec.shape.reduce((a, b) => a * b, 1);
  if (spec.values) return tf.tensor(spec.values, spec.shape, spec.dtype);
  const data = spec.dtype === "int32" ? new Int32Array(size) : new Float32Array(size);
  let s = 12345; // fixed pseudo-random inputs (values do not change the cost of these graphs)
  for (let i = 0; i < size; i++) {
    s = (s * 1103515245 + 12345) % 2147483648;
    data[i] = spec.dtype === "int32" ? s % (spec.max || 256) : (s / 2147483648) * 2 - 1;
  }
  return tf.tensor(data, spec.shape, spec.dtype);
}

async function runOnce(model, feed, names) {
  let outs;
  try {
    outs = model.execute(feed, names);
  } catch (e) {
    outs = await model.executeAsync(feed, names);
  }
  if (!Array.isArray(outs)) outs = [outs];
  await Promise.all(outs.map((t) => t.data())); // wait for the values on the CPU side (WebGL is asynchronous)
  outs.forEach((t) => t.dispose());
}

// url: model.json; inputs: {name: {dtype, shape, values?, max?}}; at least minRuns timed runs,
// up to `repeats`, stopping early once maxSeconds of timed runs have passed.
window.benchModel = async function (url, inputs, warmup, repeats, maxSeconds, minRuns) {
  const t0 = performance.now();
  const model = await tf.loadGraphModel(url);
  const loadMs = performance.now() - t0;
  const feed = Object.fromEntries(Object.entries(inputs).map(([k, spec]) => [k, makeTensor(spec)]));
  const names = Object.keys(model.signature.outputs).sort();
  const firstT = performance.now();
  await runOnce(model, feed, names);
  const firstMs = performance.now() - firstT;
  for (let i = 1; i < warmup; i++) await runOnce(model, feed, names);
  const times = [];
  const start = performance.now();
  while (times.length < repeats && (times.length < minRuns || performance.now() - start < maxSeconds * 1000)) {
    const t = performance.now();
    await runOnce(model, feed, names);
    times.push(performance.now() - t);
  }
  Object.values(feed).forEach((t) => t.dispose());
  model.dispose();
  document.getElementById("log").textContent = `${url}: ${times.length} runs`;
  return { load_ms: loadMs, first_ms: firstMs, times_ms: times, outputs: names, backend: tf.getBackend(),
           num_tensors: tf.memory().numTensors };
};

// Runs an exported TF.js graph model in Node with @tensorflow/tfjs (pure-JS CPU backend),
// the way a browser client would, so the export tests can compare it with Keras.
//
//   node run_tfjs.js MODEL_DIR REQUEST.json
//
// REQUEST.json: {"inputs": {"<signature input>": "<file.npy>"}, "out_dir": "<dir>", "repeats": 1}
// Writes <out_dir>/<signature output>.npy and prints one JSON line: output files, shapes,
// dtypes, load time and per-repeat run times (ms).
// The model is read from disk through a custom IOHandler: tfjs' own file:// loader needs
// tfjs-node, whose install downloads a native binary.
"use strict";

const fs = require("fs");
const path = require("path");
const tf = require("@tensorflow/tfjs");

const NPY_DTYPES = { "<f4": "float32", "<i4": "int32", "|u1": "uint8", "<i8": "int64", "|b1": "bool" };

function readNpy(file) {
  const buf = fs.readFileSync(file);
  if (buf.toString("latin1", 1, 6) !== "NUMPY") throw new Error(`${file}: not a .npy file`);
  const major = buf[6];
  const headerLen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const start = major === 1 ? 10 : 12;
  const header = buf.toString("latin1", start, start + headerLen);
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  if (/'fortran_order':\s*True/.test(header)) throw new Error(`${file}: Fortran order is not supported`);
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)[1];
  const shape = shapeText.split(",").map((s) => s.trim()).filter((s) => s.length).map(Number);
  const dtype = NPY_DTYPES[descr];
  if (!dtype) throw new Error(`${file}: dtype ${descr} is not supported`);
  const offset = start + headerLen;
  const bytes = buf.buffer.slice(buf.byteOffset + offset, buf.byteOffset + buf.length);
  // TF.js tensors are float32 or int32: uint8/int64/bool inputs become int32, as TF.js
  // itself represents those dtypes.
  let values;
  if (dtype === "float32") values = new Float32Array(bytes);
  else if (dtype === "int32") values = new Int32Array(bytes);
  else if (dtype === "uint8" || dtype === "bool") values = Int32Array.from(new Uint8Array(bytes));
  else values = Int32Array.from(new BigInt64Array(bytes), (v) => Number(v));
  return tf.tensor(values, shape, dtype === "float32" ? "float32" : "int32");
}

function writeNpy(file, tensor, values) {
  const descr = tensor.dtype === "float32" ? "<f4" : "<i4";
  const shape = tensor.shape.length === 1 ? `(${tensor.shape[0]},)` : `(${tensor.shape.join(", ")})`;
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shape}, }`;
  const total = 10 + header.length + 1;
  header += " ".repeat((64 - (total % 64)) % 64) + "\n";
  const head = Buffer.alloc(10);
  head.write("\x93NUMPY", 0, "latin1");
  head[6] = 1;
  head[7] = 0;
  head.writeUInt16LE(header.length, 8);
  const data = tensor.dtype === "float32" ? Float32Array.from(values) : Int32Array.from(values);
  fs.writeFileSync(file, Buffer.concat([head, Buffer.from(header, "latin1"), Buffer.from(data.buffer)]));
}

function fileHandler(dir) {
  return {
    load: async () => {
      const json = JSON.parse(fs.readFileSync(path.join(dir, "model.json"), "utf8"));
      const weightSpecs = [];
      const parts = [];
      for (const group of json.weightsManifest) {
        weightSpecs.push(...group.weights);
        for (const p of group.paths) parts.push(fs.readFileSync(path.join(dir, p)));
      }
      const all = Buffer.concat(parts);
      const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.length);
      return {
        modelTopology: json.modelTopology, weightSpecs, weightData, format: json.format,
        generatedBy: json.generatedBy, convertedBy: json.convertedBy, signature: json.signature,
        userDefinedMetadata: json.userDefinedMetadata, modelInitializer: json.modelInitializer,
      };
    },
  };
}

async function main() {
  const [modelDir, requestFile] = process.argv.slice(2);
  if (!modelDir || !requestFile) {
    console.error("usage: node run_tfjs.js MODEL_DIR REQUEST.json");
    process.exit(2);
  }
  const request = JSON.parse(fs.readFileSync(requestFile, "utf8"));
  await tf.setBackend("cpu");
  const t0 = Date.now();
  const model = await tf.loadGraphModel(fileHandler(modelDir));
  const loadMs = Date.now() - t0;
  const feed = {};
  for (const [name, file] of Object.entries(request.inputs)) feed[name] = readNpy(file);
  const outputNames = Object.keys(model.signature.outputs).sort();
  const runMs = [];
  let outputs;
  for (let r = 0; r < (request.repeats || 1); r++) {
    if (outputs) outputs.forEach((t) => t.dispose());
    const t1 = Date.now();
    outputs = await model.executeAsync(feed, outputNames);
    if (!Array.isArray(outputs)) outputs = [outputs];
    await Promise.all(outputs.map((t) => t.data())); // execution is lazy until read
    runMs.push(Date.now() - t1);
  }
  fs.mkdirSync(request.out_dir, { recursive: true });
  const result = { outputs: {}, load_ms: loadMs, run_ms: runMs, backend: tf.getBackend(), tfjs: tf.version.tfjs };
  for (let i = 0; i < outputNames.length; i++) {
    const file = path.join(request.out_dir, `${outputNames[i]}.npy`);
    writeNpy(file, outputs[i], await outputs[i].data());
    result.outputs[outputNames[i]] = { file, shape: outputs[i].shape, dtype: outputs[i].dtype };
  }
  console.log(JSON.stringify(result));
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});

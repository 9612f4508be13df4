// The export's TF.js models: found through manifest.json, kept in the browser's IndexedDB
// (keyed by the artifact's sha256, so a new export replaces them), run by signature names.

const CACHE_PREFIX = "sd-edge/";

export async function loadManifest(base) {
  const r = await fetch(new URL("manifest.json", base));
  if (!r.ok) throw new Error(`GET ${base}manifest.json: ${r.status}`);
  const m = await r.json();
  if (m.manifest_version !== 1) throw new Error(`manifest version ${m.manifest_version} is not 1`);
  return m;
}

// vae "taesd": the export's TAESD files (python -m exports --taesd) in the decoder's and the image
// encoder's places: the same inputs and outputs, a fraction of the cost (edge/client.py VAE_FILES).
export const VAE_FILES = { full: {}, taesd: { decoder: "taesd_decoder", image_encoder: "taesd_encoder" } };

/** The component whose files play `component`'s part with this vae choice. */
export function storedComponent(component, vae = "full") {
  if (!(vae in VAE_FILES)) throw new Error(`vae must be one of ${Object.keys(VAE_FILES).join(", ")}, got ${vae}`);
  return VAE_FILES[vae][component] || component;
}

/** The vae choices this export offers in TF.js: "full", and "taesd" when it has a TAESD decoder. */
export function vaeChoices(manifest) {
  const hasTaesd = manifest.artifacts.some((a) => a.component === "taesd_decoder" && a.format === "tfjs");
  return hasTaesd ? ["full", "taesd"] : ["full"];
}

export function findArtifact(manifest, component, precision, vae = "full") {
  const stored = storedComponent(component, vae);
  return manifest.artifacts.find((a) => a.component === stored && a.format === "tfjs"
    && a.precision === precision && !a.variant) || null;
}

async function dropStale(tf, component, precision, key) {
  try {
    const models = await tf.io.listModels();
    for (const url of Object.keys(models)) {
      const stem = `indexeddb://${CACHE_PREFIX}${component}-${precision}-`;
      if (url.startsWith(stem) && url !== key) await tf.io.removeModel(url);
    }
  } catch (e) { /* no IndexedDB (private mode): nothing cached, nothing to drop */ }
}

/** Loads one component; returns {model, source: "cache"|"network", bytes, component: the files'}. */
export async function loadModel(tf, base, manifest, component, precision, vae = "full") {
  const art = findArtifact(manifest, component, precision, vae);
  if (!art) throw new Error(`the export has no TF.js ${storedComponent(component, vae)} (${precision})`);
  component = art.component; // the cache is keyed by the files' own component
  const key = `indexeddb://${CACHE_PREFIX}${component}-${precision}-${art.sha256.slice(0, 16)}`;
  try {
    const model = await tf.loadGraphModel(key);
    return { model, source: "cache", bytes: art.bytes, component };
  } catch (e) { /* not cached yet */ }
  const model = await tf.loadGraphModel(new URL(`${art.path}/model.json`, base).href);
  try {
    await dropStale(tf, component, precision, key);
    await model.save(key);
  } catch (e) {
    console.warn(`could not cache ${component} in IndexedDB: ${e.message || e}`);
  }
  return { model, source: "network", bytes: art.bytes, component };
}

/** Runs a graph model on {signature input: tensor}; returns {signature output: tensor}. */
export async function run(model, feed) {
  const names = Object.keys(model.signature.outputs).sort();
  let outs;
  try {
    outs = model.execute(feed, names); // these graphs have no control flow: synchronous is fine
  } catch (e) {
    outs = await model.executeAsync(feed, names);
  }
  if (!Array.isArray(outs)) outs = [outs];
  return Object.fromEntries(names.map((n, i) => [n, outs[i]]));
}

// Whether a request needs the unconditional (negative prompt) context: only with classifier-free
// guidance, i.e. guidance > 1 on a UNet without a guidance embedding. The server runs no
// unconditional pass otherwise (models/sampling.py) and never reads that tensor, so encoding the
// negative prompt and sending a second context would cost the client time and bytes for nothing.
// The same rule as edge/client.py's uses_unconditional; the manifest says which UNet it is
// (model.guidance_embedding: an LCM-distilled UNet, which takes guidance as an embedding).
export function usesUnconditional(guidance, manifest) {
  return Number(guidance) > 1 && !manifest?.model?.guidance_embedding;
}

"""One export run: load the model once, write every planned artifact, then the manifest.

Everything is written into a sibling folder `<out>.partial-<pid>` and moved into place at the
end, so an interrupted export never leaves a folder that looks complete (TF Serving would
happily serve half a model), and --overwrite replaces the old export only once the new one
is whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from models.layers import native_convolutions
from models.lora.files import default_name as default_lora_name
from models.lora.specs import lora_list

from . import savedmodel, tfjs, tflite
from .diffusion_graph import MAX_SEED, MAX_STEPS, DiffusionModule, scheduler_names
from .errors import ExportError
from .manifest import MANIFEST_VERSION, file_entries, sha256_file, weights_digest, write_manifest
from .plan import ALL_COMPONENTS, FORMATS, PRECISIONS, XLA, parse_list, plan_jobs
from .signatures import DecoderModule, ImageEncoderModule, TextEncoderModule, UNetStepModule

EXPORTER_VERSION = "1.0"
REST_PORT, GRPC_PORT = 8501, 8500  # TF Serving's defaults; serving/ is written against them
REST_TIMEOUT_MS = 600_000  # a full-size 50-step generation on CPU takes minutes; serving/ uses this


def tflite_name(component, precision):
    return f"{component}.tflite" if precision == "float32" else f"{component}.{precision}.tflite"


def tfjs_name(component, precision):
    return component if precision == "float32" else f"{component}_{precision}"


class _Exporter:
    def __init__(self, pipe, root, xla_batch, taesd=None):
        self.pipe, self.root, self.xla_batch = pipe, root, int(xla_batch)
        self.taesd = taesd  # (encoder, decoder, config) or None
        c = pipe.components
        self.c = c
        self.latent_size = pipe.unet.config.sample_size
        self.image_size = pipe.default_size
        self.context_length = c.text_encoder.config.max_position_embeddings
        self._modules = {}
        self.work = tempfile.mkdtemp(prefix=".work-", dir=root)

    # -- modules -------------------------------------------------------------------------
    def module(self, component, kind):
        """kind: 'serving' (dynamic batch), 'xla' (fixed batch, jit) or 'tflite' (fixed shapes)."""
        key = (component, kind)
        if key not in self._modules:
            self._modules[key] = self._make(component, kind)
        return self._modules[key]

    def _make(self, component, kind):
        c, jit = self.c, kind == "xla"
        batch = {"serving": None, "xla": self.xla_batch, "tflite": 1}[kind]
        fixed = kind != "serving"
        if component == "text_encoder":
            return TextEncoderModule(c.text_encoder, batch=batch, jit_compile=jit, clip_skip=self.pipe.clip_skip)
        if component == "decoder":
            return DecoderModule(c.decoder, c.scaling_factor, c.vae_config.latent_channels, self.latent_size,
                                 batch=batch, size=self.latent_size if fixed else None, jit_compile=jit)
        if component == "image_encoder":
            return ImageEncoderModule(c.encoder, c.scaling_factor, self.image_size, batch=batch,
                                      size=self.image_size if fixed else None, jit_compile=jit)
        if component == "taesd_decoder":  # the same signature as the VAE's decoder: clients swap files
            return DecoderModule(self.taesd[1], self.taesd[2].scaling_factor, c.vae_config.latent_channels,
                                 self.latent_size, batch=batch, size=self.latent_size if fixed else None,
                                 jit_compile=jit, name=component)
        if component == "taesd_encoder":
            return ImageEncoderModule(self.taesd[0], self.taesd[2].scaling_factor, self.image_size, batch=batch,
                                      size=self.image_size if fixed else None, jit_compile=jit, name=component)
        if kind == "tflite":
            return UNetStepModule(self.pipe.unet, self.latent_size, self.context_length)
        return DiffusionModule(self.pipe.unet, c.schedule, self.latent_size, c.vae_config.latent_channels,
                               self.context_length, batch=batch, jit_compile=jit)

    def warmup_requests(self, component, module, batch=1):
        """Small real requests TF Serving replays at load (1 sampling step for diffusion)."""
        if component == "diffusion":
            reqs = [("serving_default", module.example_inputs(batch=batch, scheduler=k))
                    for k in range(len(module.schedulers))]
            reqs.append(("inpaint", module.example_inputs("inpaint", batch=batch)))
        else:
            example = module.example_inputs(batch=batch)
            if component == "text_encoder":
                example["token_ids"] = np.repeat(self.c.tokenizer.tokenize([""]), batch, 0)
            reqs = [("serving_default", example)]
        return [(sig, {k: np.asarray(v) for k, v in inputs.items()}) for sig, inputs in reqs]

    # -- formats -------------------------------------------------------------------------
    def savedmodel(self, job):
        xla = job.variant == XLA
        module = self.module(job.component, "xla" if xla else "serving")
        batch = self.xla_batch if xla else 1
        requests = self.warmup_requests(job.component, module, batch)
        if xla:
            # Compile once now: a component XLA cannot compile is skipped, not shipped broken.
            try:
                for sig, inputs in requests[:1]:
                    module.signatures()[sig](**inputs)
            except Exception as e:  # noqa: BLE001 - XLA reports unsupported ops in many types
                raise _Skip(f"XLA could not compile it: {str(e).splitlines()[0][:300]}") from e
        name = savedmodel.model_name(job.component, xla)
        path = savedmodel.version_dir(self.root, job.component, xla)
        savedmodel.save(module, path, name, requests)
        rel = os.path.relpath(path, self.root)
        return dict(path=rel, files=[rel], signatures=savedmodel.describe_signatures(module),
                    serving={"model_name": name, "version": savedmodel.VERSION,
                             "base_path": os.path.dirname(rel).replace(os.sep, "/"),
                             "batch": "dynamic" if not xla else self.xla_batch})

    def tflite(self, job):
        if job.component == "diffusion":
            tflite.check_fits("diffusion", self.pipe.unet, "UNet")
        module = self.module(job.component, "tflite")
        data = tflite.convert(module, job.precision)
        rel = os.path.join("tflite", tflite_name(job.component, job.precision))
        os.makedirs(os.path.join(self.root, "tflite"), exist_ok=True)
        with open(os.path.join(self.root, rel), "wb") as f:
            f.write(data)
        return dict(path=rel, files=[rel], signatures=tflite.describe(os.path.join(self.root, rel)))

    def tfjs(self, job, saved):
        src = saved.get(job.component)
        if src is None:  # no SavedModel requested: write a scratch one to convert
            src = os.path.join(self.work, job.component)
            if not os.path.exists(src):
                savedmodel.save(self.module(job.component, "serving"), src, job.component)
        rel = os.path.join("tfjs", tfjs_name(job.component, job.precision))
        tfjs.convert(src, os.path.join(self.root, rel), job.precision)
        return dict(path=rel, files=[rel], signatures=tfjs.describe(os.path.join(self.root, rel)))

    def close(self):
        shutil.rmtree(self.work, ignore_errors=True)


class _Skip(Exception):
    """An optional artifact (an XLA variant) that turned out impossible for this model."""


def _artifact(root, job, info, seconds):
    files = file_entries(root, info.pop("files"))
    digest = files[0]["sha256"] if len(files) == 1 else hashlib.sha256(
        "".join(f"{f['sha256']}  {f['path']}\n" for f in files).encode()).hexdigest()
    return {"component": job.component, "format": job.format, "precision": job.precision, "variant": job.variant,
            "path": info.pop("path").replace(os.sep, "/"), "bytes": sum(f["bytes"] for f in files),
            "sha256": digest, **info, "files": files, "export_seconds": round(seconds, 1)}


def _check_out(out, overwrite):
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)) and not overwrite:
        raise ExportError(f"{out} already exists and is not empty; pass --overwrite to replace it")


def export(model="tiny", out="exports_out", *, diffusion=None, formats=None, components=None, quantize=None,
           overwrite=False, xla=False, xla_batch=1, allow_pickle=False, progress=True, pipeline=None,
           loras=None, clip_skip=None, taesd=None):
    """Export `model` (any `load_components` source) to `out`; returns the manifest dict.

    `formats`/`components`/`quantize`: comma-separated strings or lists (None: all that
    apply). `pipeline`: an already loaded StableDiffusionPipeline to export instead of `model`
    (its active LoRAs and clip skip are exported too; it is left as it was given).
    `loras`: LoRA files to bake into every artifact, as [(path, scale)], paths or "FILE:SCALE"
    strings (models.lora.lora_list): merged into the weights before anything is traced, so the
    SavedModels, TFLite and TF.js files (a text-encoder LoRA: the edge text encoder too) all
    hold W0 + scale * delta, and the manifest's `loras` says which files, by sha256.
    `clip_skip`: A1111's clip skip for the exported text encoder (None: the pipeline's, 1 for a
    loaded model); recorded in the manifest, since the served UNet expects that layer's context.
    `taesd`: a TAESD (a diffusers AutoencoderTiny folder, or taesd_decoder.safetensors with its
    encoder beside it) exported as `taesd_decoder` / `taesd_encoder` in TFLite and TF.js: a second
    decoder and image encoder the edge clients may pick (`manifest.decoders`, `image_encoders`).
    """
    lora_specs = lora_list(loras)
    for path, _ in lora_specs:
        if not os.path.isfile(path):
            raise ExportError(f"LoRA file {path} does not exist")
    formats = parse_list(formats, FORMATS, "format")
    components_list = parse_list(components, ALL_COMPONENTS, "component")
    precisions = parse_list(quantize, PRECISIONS, "precision")
    out = os.path.abspath(os.path.expanduser(out))
    _check_out(out, overwrite)
    if formats is None or "tfjs" in formats:
        tfjs.converter_path()  # fail now, not after the SavedModels
    taesd_halves = ("decoder", "encoder") if taesd is not None else ()
    plan_jobs(formats, components_list, precisions, xla, taesd=taesd_halves)  # argument errors before loading
    taesd_parts = _load_taesd(taesd, allow_pickle) if taesd is not None else None

    if pipeline is None:
        from models import load_pipeline

        pipe = load_pipeline(model, allow_pickle=allow_pickle, unet=diffusion)
    else:
        pipe = pipeline
    with _baked(pipe, lora_specs, clip_skip, allow_pickle) as baked_loras:
        return _export(pipe, model, out, diffusion, formats, components_list, precisions, xla, xla_batch, progress,
                       baked_loras, taesd_parts)


def _load_taesd(source, allow_pickle):
    """(encoder or None, decoder, config) of a TAESD; any other VAE is an error naming it."""
    from models.checkpoints.vae_files import load_vae

    encoder, decoder, config = load_vae(source, allow_pickle=allow_pickle)
    if config.class_name != "AutoencoderTiny":
        raise ExportError(f"--taesd {source}: that is a {config.class_name}, not a TAESD (AutoencoderTiny); "
                          "to export another full VAE, load the model with it (load_pipeline(vae=...))")
    return encoder, decoder, config


@contextlib.contextmanager
def _baked(pipe, lora_specs, clip_skip, allow_pickle):
    """The pipeline with the export's LoRAs active (holding its LoRA lock, so no other thread
    switches them mid-export) and its clip skip set; afterwards it is as it was: the previous
    active set, clip skip and loaded LoRAs (the weights bit for bit, see models/lora).
    Yields the manifest's `loras` entries for everything active while exporting."""
    loaded_before = set(pipe.loaded_loras)
    names = []
    old_skip = pipe.clip_skip
    try:
        if clip_skip is not None:
            pipe.clip_skip = clip_skip
        for path, scale in lora_specs:
            name = default_lora_name(path)
            if name in loaded_before or name in names:
                raise ExportError(f"two LoRAs named {name!r} (the file stem): rename one of the files")
            names.append(pipe.load_lora(path, scale, activate=False, allow_pickle=allow_pickle))
        wanted = [(n, s) for n, s in pipe.active_loras] + [(n, s) for n, (_, s) in zip(names, lora_specs)]
        with pipe.loras_applied(wanted):
            yield [_lora_entry(n, s, pipe.loaded_loras[n]) for n, s in pipe.active_loras]
    finally:
        if names:
            pipe.unload_loras(names)
        if pipe.clip_skip != old_skip:
            pipe.clip_skip = old_skip


def _lora_entry(name, scale, info):
    path = info.get("file")
    return {"name": name, "scale": float(scale), "file": os.path.basename(path) if path else None,
            "sha256": sha256_file(path) if path and os.path.isfile(path) else None,
            "bytes": info.get("size_bytes"), "networks": info["networks"], "modules": info["modules"],
            "ranks": info["ranks"], "formats": info["formats"], "base": info["base"]}


def _export(pipe, model, out, diffusion, formats, components_list, precisions, xla, xla_batch, progress, loras,
            taesd=None):
    c = pipe.components
    if taesd is not None and taesd[2].latent_channels != c.vae_config.latent_channels:
        raise ExportError(f"the TAESD makes {taesd[2].latent_channels}-channel latents; this model's are "
                          f"{c.vae_config.latent_channels}-channel")
    halves = () if taesd is None else ("decoder",) + (("encoder",) if taesd[0] is not None else ())
    try:
        tflite.check_fits("diffusion", pipe.unet, "UNet")
        too_big = None
    except ExportError as e:
        too_big = str(e)
    jobs, skipped = plan_jobs(formats, components_list, precisions, xla, has_encoder=c.encoder is not None,
                              unet_too_big=too_big, taesd=halves)

    partial = f"{out}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    exporter = _Exporter(pipe, partial, xla_batch, taesd)
    artifacts, saved = [], {}
    try:
        tok = c.tokenizer
        c.tokenizer.save_vocab(os.path.join(partial, "tokenizer"))
        token_files = {k: f"tokenizer/{f}" for k, f in
                       (("vocab", "vocab.json"), ("merges", "merges.txt"), ("config", "tokenizer_config.json"))}
        artifacts.append(_artifact(partial, _FilesJob("json"), {"path": "tokenizer", "files": ["tokenizer"]}, 0))
        if any(j.format == "tfjs" for j in jobs):
            shutil.copytree(os.path.join(partial, "tokenizer"), os.path.join(partial, "tfjs", "tokenizer"))
            artifacts.append(_artifact(partial, _FilesJob("tfjs"), {"path": "tfjs/tokenizer",
                                                                       "files": ["tfjs/tokenizer"]}, 0))
        bar = _progress(jobs, progress)
        for job in bar:
            if hasattr(bar, "set_description"):
                bar.set_description(job.label)
            start = time.perf_counter()
            # Edge runtimes (TFLite, TF.js, and the edge components' SavedModels, from which the
            # TF.js models are converted) get plain Conv2D ops, not the CPU matmul path.
            edge = job.format != "savedmodel" or job.component != "diffusion"
            try:
                with native_convolutions() if edge else contextlib.nullcontext():
                    if job.format == "savedmodel":
                        info = exporter.savedmodel(job)
                        if job.variant is None:
                            saved[job.component] = os.path.join(partial, info["path"])
                    elif job.format == "tflite":
                        info = exporter.tflite(job)
                    else:
                        info = exporter.tfjs(job, saved)
            except _Skip as e:
                skipped.append({"component": job.component, "format": job.format, "precision": job.precision,
                                "variant": job.variant, "reason": str(e)})
                continue
            artifacts.append(_artifact(partial, job, info, time.perf_counter() - start))
        exporter.close()
        served = [a["serving"]["model_name"] for a in artifacts if a["format"] == "savedmodel"]
        if served:
            configs = savedmodel.write_server_configs(partial, served)
            artifacts.append(_artifact(partial, _FilesJob("config", "tf_serving"),
                                       {"path": "savedmodel", "files": configs}, 0))

        digest = weights_digest([c.text_encoder, pipe.unet, c.decoder, c.encoder])
        vae_factor = pipe.vae_factor
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "model": {"name": c.name, "source": c.source or str(model), "diffusion_source": diffusion,
                      "version": f"{c.name}-{digest[:12]}", "weights_sha256": digest, **_family_facts(pipe)},
            "loras": loras,
            "exporter": {"version": EXPORTER_VERSION, "tensorflow": tf.__version__, "keras": keras.__version__},
            "image": {"height": pipe.default_size, "width": pipe.default_size, "channels": 3, "dtype": "uint8",
                      "size_multiple": pipe.size_multiple},
            "latent": {"height": exporter.latent_size, "width": exporter.latent_size,
                       "channels": c.vae_config.latent_channels, "vae_factor": vae_factor},
            "vae_scaling_factor": float(c.scaling_factor),
            "context": {"length": exporter.context_length, "dim": int(pipe.context_dim),
                        "shape": [exporter.context_length, int(pipe.context_dim)]},
            # the decoders / image encoders a client may choose between (same inputs and outputs)
            "decoders": _choices(artifacts, {"decoder": c.vae_config.class_name, "taesd_decoder": "AutoencoderTiny"}),
            "image_encoders": _choices(artifacts, {"image_encoder": c.vae_config.class_name,
                                                   "taesd_encoder": "AutoencoderTiny"}),
            "tokenizer": {"files": token_files,
                          "tfjs_files": {k: f"tfjs/{v}" for k, v in token_files.items()}
                          if any(j.format == "tfjs" for j in jobs) else None,
                          "pad_id": int(tok.pad_id), "start_id": int(tok.start_id), "end_id": int(tok.end_id),
                          "max_length": int(tok.max_length), "vocab_size": int(tok.vocab_size)},
            "schedulers": scheduler_names(),
            "default_scheduler": "ddim",
            "diffusion": {
                "max_steps": MAX_STEPS, "seed_max": MAX_SEED, "unet_in_channels": int(pipe.unet.config.in_channels),
                "inpainting": "concat" if pipe.unet.config.is_inpainting else "blend",
                "mask": "latent resolution, 1 = repaint (area-resized pixel mask, as the pipeline)",
                "batching": "every input has a batch axis; rows are grouped by (scheduler, num_steps, start step, "
                            "guidance <= 1) and each group runs its own loop, so unrelated requests may share a batch",
                "guidance": "guidance_scale <= 1 runs no unconditional pass (unconditional_context is then not read; "
                            "send the context twice); an LCM-distilled UNet (model.guidance_embedding) takes "
                            "guidance_scale as the embedding of guidance - 1 and never runs one",
                "seeds": "row k's initial noise is stateless_normal(seed=[seed_k, 0]); euler_a step noise per row "
                         "from [seed_k, 1]: a row equals pipeline.generate(seed=seed_k, batch_size=1)",
            },
            "serving": {"rest_port": REST_PORT, "grpc_port": GRPC_PORT, "version": savedmodel.VERSION,
                        "container_root": savedmodel.CONTAINER_ROOT,
                        "models_config": f"savedmodel/{savedmodel.MODELS_CONFIG}" if served else None,
                        "batching_config": f"savedmodel/{savedmodel.BATCHING_CONFIG}" if served else None,
                        "rest_api_timeout_ms": REST_TIMEOUT_MS,
                        "models": {a["serving"]["model_name"]: a["serving"]["base_path"]
                                   for a in artifacts if a["format"] == "savedmodel"}},
            "tflite": {"ops": "TFLITE_BUILTINS only", "batch": 1, "diffusion": "one UNet call, batch 2 = "
                       "[unconditional, conditional]; the client runs the scheduler (the output is v for "
                       "v_prediction models; LCM UNets also take guidance_scale)"},
            "artifacts": artifacts,
            "skipped": skipped,
        }
        write_manifest(partial, manifest)
    except BaseException:
        exporter.close()
        shutil.rmtree(partial, ignore_errors=True)
        raise
    _replace(partial, out)
    return manifest


def _choices(artifacts, kinds):
    """[{component, vae}] for each of `kinds` (component -> VAE class) that this export wrote."""
    written = {a["component"] for a in artifacts}
    return [{"component": k, "vae": v} for k, v in kinds.items() if k in written]


def _family_facts(pipe):
    """What a client needs to run this model family's text encoder and loop: the family, what
    the UNet predicts, the timestep spacing the schedulers use (None: each scheduler's own),
    the clip skip baked into the text encoder, and whether guidance is an embedding (LCM)."""
    info = pipe.info()
    return {k: info[k] for k in ("model_family", "prediction_type", "timestep_spacing", "clip_skip",
                                 "guidance_embedding")}


class _FilesJob:
    """Artifact identity of the files that are not a network (tokenizer, server configs)."""

    def __init__(self, fmt, component="tokenizer"):
        self.component, self.format, self.precision, self.variant = component, fmt, None, None


def _progress(jobs, enabled):
    if not enabled:
        return jobs
    from tqdm import tqdm

    return tqdm(jobs, unit="artifact", dynamic_ncols=True)


def _replace(partial, out):
    """Move the finished export into place; the previous one goes only after that worked."""
    old = None
    if os.path.exists(out):
        old = f"{out}.old-{os.getpid()}"
        os.rename(out, old)
    os.rename(partial, out)
    if old:
        shutil.rmtree(old, ignore_errors=True) if os.path.isdir(old) else os.remove(old)

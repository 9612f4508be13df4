"""python -m webapp --model SOURCE [--unet FINETUNED] [--component ...] [--host --port] ...

Starts one FastAPI application on uvicorn: the Gradio UI at /, the REST API under /api/v1/
(OpenAPI at /openapi.json, docs at /api/docs), the edge exports under /exports/ and the
browser client under /edge/. With --component it hosts one stage of the split deployment;
with the three --*-url options it is a front end that chains three such servers.
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m webapp", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help='"tiny" (embedded), a diffusers folder, an ldm .safetensors, ...')
    p.add_argument("--unet", default=None, help="a fine-tuned diffusion model replacing the base one at start")
    p.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", 7860)))
    p.add_argument("--models-dir", default=None, help="folder of fine-tuned diffusion models to offer")
    p.add_argument("--loras-dir", default=None, help="folder of .safetensors LoRAs: each is checked against the "
                   "base at start (a file that does not fit stops the server, named) and selectable per request "
                   "(loras: [{name, scale}] or <lora:name:scale> in the prompt)")
    p.add_argument("--taesd", default=None, metavar="PATH", help="a TAESD (AutoencoderTiny folder, or "
                   "taesd_decoder.safetensors) for the UI's progress previews of the predicted image "
                   "(default: the model's decoder at preview size)")
    p.add_argument("--runtime", default=os.environ.get("SD_RUNTIME", "tensorflow"), choices=["tensorflow", "openvino"],
                   help="what runs the networks: TensorFlow's compiled graphs, or OpenVINO's CPU plugin on the same "
                        "networks (faster on a CPU; converts each network at start)")
    p.add_argument("--dtype", default=os.environ.get("SD_DTYPE") or None, choices=["float32", "bfloat16"],
                   help="the networks' dtype (default: float32 math; bfloat16 is about 2x faster on CPUs with "
                        "AVX-512 BF16 or AMX, at the image-quality cost the README reports)")
    p.add_argument("--component", default="all", choices=["all", "text_encoder", "diffusion", "decoder"])
    p.add_argument("--text-encoder-url", default=None)
    p.add_argument("--diffusion-url", default=None)
    p.add_argument("--decoder-url", default=None)
    p.add_argument("--split-dtype", default="float32", choices=["float32", "float16"],
                   help="tensor dtype between a front end and its stages")
    p.add_argument("--exports", default=None, help="export folder to serve at /exports/ "
                   "(default build/exports/<model name> when it exists)")
    p.add_argument("--edge-dir", default=None, help="browser client folder served at /edge/ (default edge/web)")
    p.add_argument("--no-ui", action="store_true", help="serve only the API")
    p.add_argument("--no-warm-up", action="store_true", help="do not compile every size-generic graph at start "
                   "(then the first request of each scheduler and mode pays it)")
    p.add_argument("--cors", default=None, help="comma-separated browser origins allowed to call the API "
                   "(default $SD_CORS_ORIGINS; none)")
    p.add_argument("--token-env", default="SD_API_TOKEN", help="environment variable holding the API token")
    p.add_argument("--concurrency", type=int, default=None, help="model runs at once (default: one per GPU, 1 on CPU)")
    p.add_argument("--batch-requests", type=int, default=None, help="requests that may denoise at once, their "
                   "steps sharing UNet calls of at most --max-batch images (default 8; 1: one at a time)")
    p.add_argument("--queue-size", type=int, default=None, help="requests that may wait (default 16)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per request (default 300)")
    p.add_argument("--max-body-mb", type=float, default=None, help="request body limit (default 32)")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--max-batch", type=int, default=None)
    p.add_argument("--max-side", type=int, default=None)
    p.add_argument("--log-level", default="info")
    return p.parse_args(argv)


def config_from_args(args):
    from .auth import token_from_env
    from .limits import Limits
    from .server import Config

    limits = Limits.from_env(concurrency=args.concurrency, batch_requests=args.batch_requests, queue_size=args.queue_size, timeout_s=args.timeout,
                             max_body_bytes=int(args.max_body_mb * 2**20) if args.max_body_mb else None,
                             max_steps=args.max_steps, max_batch=args.max_batch, max_side=args.max_side)
    return Config(model=args.model, unet=args.unet, models_dir=args.models_dir, loras_dir=args.loras_dir,
                  component=args.component,
                  text_encoder_url=args.text_encoder_url, diffusion_url=args.diffusion_url,
                  decoder_url=args.decoder_url, exports=args.exports, edge_dir=args.edge_dir, ui=not args.no_ui,
                  token=token_from_env(args.token_env) or "",
                  cors=args.cors, limits=limits, split_dtype=args.split_dtype, taesd=args.taesd,
                  runtime=args.runtime, dtype=args.dtype,
                  warm_up=not args.no_warm_up)


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import uvicorn

    from .server import create_app

    try:
        app = create_app(config_from_args(args))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"serving on http://{args.host}:{args.port}/  (API: /api/v1/, docs: /api/docs)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())

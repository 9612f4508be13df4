"""CPU benchmarks: one guided denoising step against KerasCV and diffusers, and pipeline memory.

    python -m bench.unet_step          # ms/step + peak RSS, ours (graph, XLA) vs KerasCV vs diffusers
    python -m bench.pipeline_memory    # peak RSS of the full fp32 pipeline generating one 512px image
"""

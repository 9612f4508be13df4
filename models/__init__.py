"""Stable Diffusion v1.x in Keras 3: networks, tokenizer, schedulers, pipeline, loaders."""

"""The CLIP text transformer that turns 77 token ids into the UNet's context.

Causal self-attention, quick-GELU MLPs (SD v1's CLIP ViT-L/14) and a final layer norm,
whose output (the last hidden state) is what SD v1 conditions on. Quick-GELU also matters
at the edge: the exact GELU's Erfc does not convert to TF.js.

SD 2.x's OpenCLIP ViT-H tower is the same network with the exact GELU (hidden_act="gelu"),
width 1024 and 16 heads. SD 2 conditions on OpenCLIP's penultimate layer followed by the final
layer norm, so its diffusers folders (and our single-file loader) keep 23 of the 24 layers and
this model's plain output is SD 2's conditioning. `with_clip_skip(n)` is AUTOMATIC1111's
"clip skip": the final layer norm of the hidden state n - 1 layers before the last (2 = the
penultimate layer), sharing these weights.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from .config import TextEncoderConfig
from .layers import attention


def quick_gelu(x):
    return x * ops.sigmoid(1.702 * x)


class CLIPEmbeddings(keras.layers.Layer):
    """Token embedding plus a learned absolute position embedding."""

    def __init__(self, vocab_size, hidden_size, max_positions, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.hidden_size, self.max_positions = vocab_size, hidden_size, max_positions
        self.token_embedding = keras.layers.Embedding(vocab_size, hidden_size, name="token_embedding")
        self.position_embedding = keras.layers.Embedding(max_positions, hidden_size, name="position_embedding")

    def build(self, input_shape):
        self.token_embedding.build(input_shape)
        self.position_embedding.build((None,))

    def call(self, token_ids):
        positions = ops.arange(ops.shape(token_ids)[1])
        return self.token_embedding(token_ids) + self.position_embedding(positions)[None]

    def get_config(self):
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "max_positions": self.max_positions,
        }


class CLIPEncoderLayer(keras.layers.Layer):
    """Pre-norm causal self-attention and MLP, each with a residual."""

    def __init__(self, hidden_size, heads, intermediate_size, hidden_act="quick_gelu", eps=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size, self.heads, self.intermediate_size = hidden_size, heads, intermediate_size
        self.hidden_act, self.eps = hidden_act, eps
        self.layer_norm1 = keras.layers.LayerNormalization(epsilon=eps, name="layer_norm1")
        self.q_proj = keras.layers.Dense(hidden_size, name="self_attn.q_proj")
        self.k_proj = keras.layers.Dense(hidden_size, name="self_attn.k_proj")
        self.v_proj = keras.layers.Dense(hidden_size, name="self_attn.v_proj")
        self.out_proj = keras.layers.Dense(hidden_size, name="self_attn.out_proj")
        self.layer_norm2 = keras.layers.LayerNormalization(epsilon=eps, name="layer_norm2")
        self.fc1 = keras.layers.Dense(intermediate_size, name="mlp.fc1")
        self.fc2 = keras.layers.Dense(hidden_size, name="mlp.fc2")

    def build(self, input_shape):
        for layer in (self.layer_norm1, self.q_proj, self.k_proj, self.v_proj, self.out_proj,
                      self.layer_norm2, self.fc1):
            layer.build(input_shape)
        self.fc2.build(tuple(input_shape[:-1]) + (self.intermediate_size,))
        n = input_shape[1]
        # Additive causal mask as a constant: converts to TFLite/TF.js without select ops.
        self._mask = np.triu(np.full((n, n), -1e9, np.float32), k=1)[None, None]

    def call(self, x):
        h = self.layer_norm1(x)
        mask = ops.cast(self._mask, h.dtype)
        h = attention(self.q_proj(h), self.k_proj(h), self.v_proj(h), self.heads, bias=mask)
        x = x + self.out_proj(h)
        h = self.fc1(self.layer_norm2(x))
        h = quick_gelu(h) if self.hidden_act == "quick_gelu" else keras.activations.gelu(h, approximate=False)
        return x + self.fc2(h)

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_size": self.hidden_size,
            "heads": self.heads,
            "intermediate_size": self.intermediate_size,
            "hidden_act": self.hidden_act,
            "eps": self.eps,
        }


class TextEncoder(keras.Model):
    """`TextEncoder(config)(token_ids [B, 77] int32) -> context [B, 77, hidden_size]`."""

    def __init__(self, config: TextEncoderConfig | dict | None = None, name="text_encoder", **kwargs):
        if isinstance(config, dict):
            config = TextEncoderConfig.from_dict(config)
        c = config or TextEncoderConfig()
        token_ids = keras.Input((c.max_position_embeddings,), dtype="int32", name="token_ids")
        x = CLIPEmbeddings(
            c.vocab_size, c.hidden_size, c.max_position_embeddings, name="text_model.embeddings"
        )(token_ids)
        for i in range(c.num_hidden_layers):
            x = CLIPEncoderLayer(
                c.hidden_size, c.num_attention_heads, c.intermediate_size, c.hidden_act,
                c.layer_norm_eps, name=f"text_model.encoder.layers.{i}",
            )(x)
        context = keras.layers.LayerNormalization(
            epsilon=c.layer_norm_eps, name="text_model.final_layer_norm", dtype="float32"
        )(x)
        super().__init__(token_ids, context, name=name, **kwargs)
        self.config = c
        self._clip_skip_models = {}

    def with_clip_skip(self, clip_skip: int):
        """This model for clip_skip 1, else a model sharing its layers that stops clip_skip - 1
        layers early and applies the final layer norm (diffusers' clip_skip is ours minus one)."""
        layers = self.config.num_hidden_layers
        if isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or not 1 <= clip_skip <= layers:
            raise ValueError(f"clip_skip must be an integer from 1 to {layers} (the text encoder's layers), "
                             f"got {clip_skip!r}")
        if clip_skip == 1:
            return self
        if clip_skip not in self._clip_skip_models:
            token_ids = keras.Input((self.config.max_position_embeddings,), dtype="int32", name="token_ids")
            x = self.get_layer("text_model.embeddings")(token_ids)
            for i in range(layers - clip_skip + 1):
                x = self.get_layer(f"text_model.encoder.layers.{i}")(x)
            context = self.get_layer("text_model.final_layer_norm")(x)
            self._clip_skip_models[clip_skip] = keras.Model(token_ids, context, name=f"{self.name}_clip_skip_{clip_skip}")
        return self._clip_skip_models[clip_skip]

    def get_config(self):
        return {"config": self.config.to_dict(), "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

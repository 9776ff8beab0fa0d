"""`Model`: a config (static) plus a parameter pytree, and the pure functions over it."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seal_jax.models import schema
from seal_jax.models.config import ModelConfig
from seal_jax.models.transformer import Transformer, head_matrix

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def as_dtype(dtype) -> Any:
    if isinstance(dtype, str):
        try:
            return DTYPES[dtype]
        except KeyError:
            raise ValueError(f"unsupported dtype {dtype!r} (supported: {', '.join(DTYPES)})") from None
    return jnp.dtype(dtype).type if dtype is not None else jnp.float32


@dataclasses.dataclass(frozen=True)
class Model:
    """A pytree: `params` are leaves, `config` is static (hashable), so a Model can be passed straight to `jax.jit`."""

    config: ModelConfig
    params: Any  # Linen params dict: embedding, layers/... (stacked on L), final_norm, [lm_head]

    @property
    def dtype(self):
        return self.params["embedding"].dtype

    def module(self) -> Transformer:
        return Transformer(self.config, self.dtype)

    def apply(self, tokens, positions, segment_ids, lora=None, cache=None, cache_index=None, kv_segment_ids=None,
              output: str = "logits"):
        """Raw call (inside jit): tokens [B, T] -> (logits float32 [B, T, V], cache); output "last" (logits of
        the last position [B, 1, V]) or "hidden" (final-normed hidden states [B, T, D]) as `Transformer`."""
        return self.module().apply({"params": self.params}, tokens, positions, segment_ids, lora=lora, cache=cache,
                                   cache_index=cache_index, kv_segment_ids=kv_segment_ids, output=output)

    def head(self) -> jax.Array:
        """The output projection [D, V] (the transposed embedding when tied)."""
        return head_matrix(self.params, self.config)


jax.tree_util.register_dataclass(Model, data_fields=["params"], meta_fields=["config"])


def init_model(cfg: ModelConfig, seed: int = 0, dtype="float32") -> Model:
    """Random-initialised model (normal(0.02) weights, unit norms, zero biases)."""
    dt = as_dtype(dtype)
    tokens = jnp.zeros((1, 1), jnp.int32)

    @jax.jit
    def _init(key):
        return Transformer(cfg, dt).init(key, tokens, tokens, tokens + 1)["params"]

    return Model(cfg, _init(jax.random.PRNGKey(seed)))


def abstract_params(cfg: ModelConfig, dtype="float32") -> Any:
    """ShapeDtypeStruct pytree of the parameters (from the schema), without allocating them."""
    dt = as_dtype(dtype)
    tree: dict = {}
    for s in schema.specs(cfg):
        *groups, leaf = s.keys
        node = tree
        for k in groups:
            node = node.setdefault(k, {})
        node[leaf] = jax.ShapeDtypeStruct(s.shape(cfg), dt)
    return tree


@jax.jit
def _forward(model: Model, tokens, positions, segment_ids, lora):
    return model.apply(tokens, positions, segment_ids, lora=lora)[0]


def forward(model: Model, tokens, *, positions=None, segment_ids=None, lora=None) -> jax.Array:
    """int32 [B, T] -> float32 logits [B, T, V].

    Without `segment_ids` every token is real (no padding). `segment_ids` [B, T] (0 = padding, equal non-zero ids =
    one packed sequence) and `positions` [B, T] (rotary positions) support padded and packed batches.
    `lora`: an adapter from `seal_jax.load_adapter` / `seal_jax.lora` (or None).
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, length], got shape {tokens.shape}")
    if int(jnp.max(tokens)) >= model.config.vocab_size or int(jnp.min(tokens)) < 0:
        raise ValueError(f"token ids must lie in [0, {model.config.vocab_size})")
    B, T = tokens.shape
    if segment_ids is None:
        segment_ids = jnp.ones((B, T), jnp.int32)
    if positions is None:
        positions = np.broadcast_to(np.arange(T, dtype=np.int32), (B, T))
    if lora is not None and hasattr(lora, "layer_tree"):
        lora = lora.layer_tree()
    return _forward(model, tokens, jnp.asarray(positions, jnp.int32), jnp.asarray(segment_ids, jnp.int32), lora)

"""Functional LoRA: adapters as a pytree separate from the frozen base.

For each target projection (a row of the parameter schema with a LoRA name: q, k, v, o, gate, up, down) an
adapter holds
    a [*A, L, in, r]   (PEFT's lora_A.weight transposed; kaiming-uniform init, i.e. U(-1/sqrt(in), 1/sqrt(in)))
    b [*A, L, r, out]  (PEFT's lora_B.weight transposed; zero init)
and the update is  y += scale * (x @ a) @ b  with scale = alpha / r (alpha / sqrt(r) with rsLoRA). `*A` is an
optional leading adapter axis: a batch of K adapters is one `Lora` with weights [K, L, ...], trained with `vmap` over
that axis while the base is shared. The per-head projections (q, k, v, o) use the flat [in, out] view of the
head-split kernels.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from seal_jax.models import schema
from seal_jax.models.config import ModelConfig
from seal_jax.models.model import Model, as_dtype

# Every LoRA target the parameter schema has (q, k, v, o, gate, up, down), as of import; checks read the schema.
ALL_TARGETS = schema.lora_targets()


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    rank: int = 32
    alpha: float = 64.0
    targets: tuple[str, ...] = ("q", "v")
    dropout: float = 0.0
    dtype: str = "float32"  # adapters stay fp32 over a bf16 base, as PEFT's autocast_adapter_dtype does
    use_rslora: bool = False  # rank-stabilised LoRA: scale = alpha / sqrt(rank) instead of alpha / rank

    def __post_init__(self):
        targets = tuple(self.targets)
        object.__setattr__(self, "targets", targets)
        known = schema.lora_targets()
        bad = [t for t in targets if t not in known]
        if bad or not targets:
            raise ValueError(f"unknown LoRA target(s) {bad or '[]'} (choose from {', '.join(known)})")
        if self.rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")

    @property
    def scale(self) -> float:
        return self.alpha / math.sqrt(self.rank) if self.use_rslora else self.alpha / self.rank


@dataclasses.dataclass(frozen=True)
class Lora:
    """A pytree: `weights` are leaves ({target: {"a", "b"}}), `config` is static."""

    config: LoraConfig
    weights: dict[str, dict[str, Any]]

    @property
    def num_adapters(self) -> int | None:
        """K for a batch of adapters (leading axis), None for a single adapter."""
        a = next(iter(self.weights.values()))["a"]
        return a.shape[0] if a.ndim == 4 else None

    def adapter(self, k: int) -> "Lora":
        """Adapter k of a batch, as a single adapter."""
        return Lora(self.config, jax.tree.map(lambda w: w[k], self.weights))

    def layer_tree(self, dropout_key=None) -> dict[str, dict[str, Any]]:
        """The form the model's LoRA hook takes: every leaf stacked on layers first.

        single adapter: a [L, in, r], scale [L];  batch of K: a [L, K, in, r], scale [L, K] (the "grouped" form: the
        model's batch rows are K equal consecutive groups, group k using adapter k).
        dropout_key: when given and config.dropout > 0, PEFT-style dropout on each adapter's input.
        """
        out = {}
        n_keys = len(self.weights)
        keys = None if dropout_key is None or self.config.dropout == 0 else jax.random.split(dropout_key, n_keys)
        for i, (name, w) in enumerate(sorted(self.weights.items())):
            a, b = w["a"], w["b"]
            if a.ndim == 4:  # [K, L, ...] -> [L, K, ...]
                a, b = jnp.swapaxes(a, 0, 1), jnp.swapaxes(b, 0, 1)
            L = a.shape[0]
            scale_shape = a.shape[:-2]
            entry = {"a": a, "b": b, "scale": jnp.full(scale_shape, self.config.scale, a.dtype)}
            if keys is not None:
                entry["dropout"] = {"rate": jnp.full((L,), self.config.dropout, a.dtype),
                                    "key": jax.random.split(keys[i], L)}
            out[name] = entry
        return out


    def ragged_tree(self, group_ids, group_sizes) -> dict[str, dict[str, Any]]:
        """The model hook's ragged form for a batch of K adapters over a grouped token stream (see
        `seal_jax.models.grouped`): a [L, K, in, r], b [L, K, r, out], scale [L, K], and the stream's group_ids /
        group_sizes [G] repeated per layer ([L, G]) so that the layer scan hands every layer the same groups."""
        if self.num_adapters is None:
            raise ValueError("ragged_tree needs a batch of adapters (leading adapter axis)")
        if self.config.dropout:
            raise ValueError("LoRA dropout is not supported over a ragged token stream; use the padded inner loop "
                             "(seal_jax.inner_loop.train) for adapters with dropout")
        out = {}
        for name, w in sorted(self.weights.items()):
            a, b = jnp.swapaxes(w["a"], 0, 1), jnp.swapaxes(w["b"], 0, 1)  # [L, K, ...]
            L, K = a.shape[:2]
            out[name] = {"a": a, "b": b, "scale": jnp.full((L, K), self.config.scale, a.dtype),
                         "group_ids": jnp.broadcast_to(jnp.asarray(group_ids, jnp.int32), (L,) + jnp.shape(group_ids)),
                         "group_sizes": jnp.broadcast_to(jnp.asarray(group_sizes, jnp.int32),
                                                         (L,) + jnp.shape(group_sizes))}
        return out


jax.tree_util.register_dataclass(Lora, data_fields=["weights"], meta_fields=["config"])


def init_lora(model_cfg: ModelConfig, lora_cfg: LoraConfig, key, num_adapters: int | None = None,
              shared_init: bool = False) -> Lora:
    """PEFT's initialisation: A ~ kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)), B = 0.

    num_adapters: K for a batch (leading axis); each adapter draws its own A unless `shared_init` (the same A for all,
    as the original ARC code re-initialises from one seed).
    """
    dt = as_dtype(lora_cfg.dtype)
    shapes = schema.lora_shapes(model_cfg)
    L, r = model_cfg.num_layers, lora_cfg.rank
    lead = () if num_adapters is None else (num_adapters,)
    weights = {}
    for i, name in enumerate(lora_cfg.targets):
        fan_in, fan_out = shapes[name]
        bound = 1.0 / math.sqrt(fan_in)
        k = jax.random.fold_in(key, i)
        a_shape = (L, fan_in, r) if shared_init else lead + (L, fan_in, r)
        a = jax.random.uniform(k, a_shape, dt, -bound, bound)
        if shared_init and lead:
            a = jnp.broadcast_to(a, lead + a.shape)
        weights[name] = {"a": a, "b": jnp.zeros(lead + (L, r, fan_out), dt)}
    return Lora(lora_cfg, weights)


def stack_adapters(adapters: Sequence[Lora]) -> Lora:
    """K single adapters (same config) -> one batch with a leading adapter axis."""
    cfgs = {a.config for a in adapters}
    if len(cfgs) != 1:
        raise ValueError("adapters in one batch must share one LoraConfig (rank, alpha, targets)")
    return Lora(adapters[0].config, jax.tree.map(lambda *ws: jnp.stack(ws), *[a.weights for a in adapters]))


def lora_delta_weight(lora: Lora, name: str) -> jax.Array:
    """scale * A @ B as a flat [L, in, out] matrix (single adapter)."""
    w = lora.weights[name]
    return lora.config.scale * jnp.einsum("lir,lro->lio", w["a"], w["b"])


def merge(model: Model, lora: Lora) -> Model:
    """Fold a single adapter into the base weights: W' = W + scale * A @ B (in the base's dtype)."""
    if lora.num_adapters is not None:
        raise ValueError("merge takes a single adapter; use lora.adapter(k) to pick one from a batch")
    params = jax.tree.map(lambda x: x, model.params)  # shallow structural copy
    specs = schema.lora_specs()
    for name in lora.weights:
        *groups, leaf = specs[name].keys
        node = params
        for k in groups:
            node = node[k]
        kernel = node[leaf]  # [L, *kernel] (q/k/v: [L, D, N, Dh], o: [L, H, Dh, D], mlp: [L, in, out])
        delta = lora_delta_weight(lora, name).reshape(kernel.shape)  # [L, in, out] -> the kernel's head split
        node[leaf] = (kernel.astype(jnp.float32) + delta).astype(kernel.dtype)
    return Model(model.config, params)


def num_lora_params(model_cfg: ModelConfig, lora_cfg: LoraConfig) -> int:
    shapes = schema.lora_shapes(model_cfg)
    return model_cfg.num_layers * sum(lora_cfg.rank * (shapes[t][0] + shapes[t][1]) for t in lora_cfg.targets)

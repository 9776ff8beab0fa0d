"""The one parameter schema: every parameter of the model, described once (no I/O).

Each `ParamSpec` row says, for one leaf of the params tree:
  path     where it lives ("layers/..." leaves are stacked on a leading L axis and scanned);
  dims     its per-layer shape in the shape letters of `seal_jax.models.transformer` (D, F, V, H, K, Dh);
  axes     the logical axis of each dim (the sharding rules in `seal_jax.sharding` map them to mesh axes);
  init     "normal" (N(0, 0.02)), "ones" or "zeros";
  hf       its HF tensor name (per-layer suffix after `model.layers.{i}.` for layer leaves) and `layout`, the named
           transform between the HF array and ours (`LAYOUTS`);
  lora     the LoRA target name when an adapter can sit on it (a kernel); its PEFT module name is the HF name without
           ".weight", its flat [in, out] shape the transposed HF [out, in] shape;
  when     which configs have it (the qkv biases, the untied head).
Everything else is derived from `PARAMS` at call time: the Linen modules create their parameters from it
(`seal_jax.models.transformer`), and the sharding rules (`param_axes`), the HF key map (`hf_tensor_names`), the LoRA
shapes and PEFT module names (`lora_targets`, `lora_shapes`, `peft_modules`) and `ModelConfig.num_params` read it.
Adding a parameter is one row here (plus, if the forward pass uses it, the line of model code that does).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

from seal_jax.models.config import ModelConfig

# shape letter -> its size in a config
DIMS: dict[str, Callable[[ModelConfig], int]] = {
    "D": lambda c: c.hidden_size,
    "F": lambda c: c.intermediate_size,
    "V": lambda c: c.vocab_size,
    "H": lambda c: c.num_heads,
    "K": lambda c: c.num_kv_heads,
    "Dh": lambda c: c.head_dim,
}

# HF layout (torch Linear stores [out, in]) name -> (HF array -> ours of `shape`, ours -> HF array); per layer.
LAYOUTS: dict[str, tuple[Callable, Callable]] = {
    "copy": (lambda w, shape: w.reshape(shape), lambda w: w),
    "linear": (lambda w, shape: w.T.reshape(shape), lambda w: w.T),  # [out, in] <-> [in, out]
    # [N*Dh, D] <-> [D, N, Dh]  (q/k/v: N = H or K)
    "in_heads": (lambda w, shape: w.T.reshape(shape), lambda w: w.reshape(w.shape[0], -1).T),
    "heads_bias": (lambda w, shape: w.reshape(shape), lambda w: w.reshape(-1)),  # [N*Dh] <-> [N, Dh]
    # [D, H*Dh] <-> [H, Dh, D]  (o)
    "out_heads": (lambda w, shape: w.T.reshape(shape), lambda w: w.reshape(-1, w.shape[-1]).T),
}

INITS = ("normal", "ones", "zeros")
LAYER_PREFIX = "model.layers."


def _always(cfg: ModelConfig) -> bool:
    return True


def _qkv_bias(cfg: ModelConfig) -> bool:
    return cfg.qkv_bias


def _untied(cfg: ModelConfig) -> bool:
    return not cfg.tie_word_embeddings


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    path: str  # "/"-joined path in the params tree
    dims: tuple[str, ...]  # per-layer shape letters (see DIMS)
    axes: tuple[str, ...]  # per-layer logical axes, one per dim
    init: str  # one of INITS
    hf: str  # HF tensor name (layer leaves: the suffix after "model.layers.{i}.")
    layout: str  # one of LAYOUTS
    lora: str | None = None  # LoRA target name
    when: Callable[[ModelConfig], bool] = _always

    def __post_init__(self):
        if len(self.dims) != len(self.axes) or self.init not in INITS or self.layout not in LAYOUTS:
            raise ValueError(f"malformed parameter spec {self.path}")
        if any(d not in DIMS for d in self.dims):
            raise ValueError(f"{self.path}: unknown shape letter in {self.dims} (known: {', '.join(DIMS)})")
        if self.lora is not None and not self.hf.endswith(".weight"):
            raise ValueError(f"{self.path}: a LoRA target must be a HF Linear weight, got {self.hf}")

    @property
    def layered(self) -> bool:
        return self.path.startswith("layers/")

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.path.split("/"))

    def layer_shape(self, cfg: ModelConfig) -> tuple[int, ...]:
        """The shape of one layer's slice (the whole shape for a top-level leaf)."""
        return tuple(DIMS[d](cfg) for d in self.dims)

    def shape(self, cfg: ModelConfig) -> tuple[int, ...]:
        """The shape in the params tree ([L, ...] for a layer leaf)."""
        return ((cfg.num_layers,) if self.layered else ()) + self.layer_shape(cfg)

    @property
    def logical_axes(self) -> tuple[str, ...]:
        return (("layers",) if self.layered else ()) + self.axes

    def hf_shape(self, cfg: ModelConfig) -> tuple[int, ...]:
        """The shape of the HF tensor (one layer's)."""
        return LAYOUTS[self.layout][1](np.empty(self.layer_shape(cfg), np.int8)).shape

    @property
    def peft_module(self) -> str:
        return self.hf[: -len(".weight")]


PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("embedding", ("V", "D"), ("vocab", "embed"), "normal", "model.embed_tokens.weight", "copy"),
    ParamSpec("final_norm/scale", ("D",), ("norm",), "ones", "model.norm.weight", "copy"),
    ParamSpec("lm_head", ("D", "V"), ("embed", "vocab"), "normal", "lm_head.weight", "linear", when=_untied),
    ParamSpec("layers/input_norm/scale", ("D",), ("norm",), "ones", "input_layernorm.weight", "copy"),
    ParamSpec("layers/post_attn_norm/scale", ("D",), ("norm",), "ones", "post_attention_layernorm.weight", "copy"),
    ParamSpec("layers/attn/q/kernel", ("D", "H", "Dh"), ("embed", "q_heads", "head_dim"), "normal",
              "self_attn.q_proj.weight", "in_heads", lora="q"),
    ParamSpec("layers/attn/k/kernel", ("D", "K", "Dh"), ("embed", "kv_heads", "head_dim"), "normal",
              "self_attn.k_proj.weight", "in_heads", lora="k"),
    ParamSpec("layers/attn/v/kernel", ("D", "K", "Dh"), ("embed", "kv_heads", "head_dim"), "normal",
              "self_attn.v_proj.weight", "in_heads", lora="v"),
    ParamSpec("layers/attn/q/bias", ("H", "Dh"), ("q_heads", "head_dim"), "zeros", "self_attn.q_proj.bias",
              "heads_bias", when=_qkv_bias),
    ParamSpec("layers/attn/k/bias", ("K", "Dh"), ("kv_heads", "head_dim"), "zeros", "self_attn.k_proj.bias",
              "heads_bias", when=_qkv_bias),
    ParamSpec("layers/attn/v/bias", ("K", "Dh"), ("kv_heads", "head_dim"), "zeros", "self_attn.v_proj.bias",
              "heads_bias", when=_qkv_bias),
    ParamSpec("layers/attn/o/kernel", ("H", "Dh", "D"), ("q_heads", "head_dim", "embed"), "normal",
              "self_attn.o_proj.weight", "out_heads", lora="o"),
    ParamSpec("layers/mlp/gate/kernel", ("D", "F"), ("embed", "mlp"), "normal", "mlp.gate_proj.weight", "linear",
              lora="gate"),
    ParamSpec("layers/mlp/up/kernel", ("D", "F"), ("embed", "mlp"), "normal", "mlp.up_proj.weight", "linear",
              lora="up"),
    ParamSpec("layers/mlp/down/kernel", ("F", "D"), ("mlp", "embed"), "normal", "mlp.down_proj.weight", "linear",
              lora="down"),
)


# ------------------------------------------------------------------ derived views (read PARAMS at call time)
def specs(cfg: ModelConfig | None = None) -> tuple[ParamSpec, ...]:
    """The rows a config has (every row without a config)."""
    return tuple(s for s in PARAMS if cfg is None or s.when(cfg))


def spec_tree(cfg: ModelConfig) -> dict:
    """The config's rows as a nested dict keyed like the params tree (table order within each level)."""
    tree: dict = {}
    for s in specs(cfg):
        *groups, leaf = s.keys
        node = tree
        for k in groups:
            node = node.setdefault(k, {})
        node[leaf] = s
    return tree


def param_axes() -> dict[str, tuple[str, ...]]:
    """Logical axes of every parameter, by its "/"-joined path."""
    return {s.path: s.logical_axes for s in PARAMS}


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    return {s.path: s.shape(cfg) for s in specs(cfg)}


def num_params(cfg: ModelConfig) -> int:
    return sum(math.prod(s.shape(cfg)) for s in specs(cfg))


def hf_tensor_names(cfg: ModelConfig) -> dict[str, tuple[ParamSpec, int | None]]:
    """Every HF tensor this config has -> (its row, layer index or None); top-level tensors first, then by layer."""
    names: dict[str, tuple[ParamSpec, int | None]] = {s.hf: (s, None) for s in specs(cfg) if not s.layered}
    for i in range(cfg.num_layers):
        names.update({f"{LAYER_PREFIX}{i}.{s.hf}": (s, i) for s in specs(cfg) if s.layered})
    return names


def lora_specs() -> dict[str, ParamSpec]:
    """LoRA target name -> its row (a layer kernel), in table order."""
    return {s.lora: s for s in PARAMS if s.lora is not None}


def lora_targets() -> tuple[str, ...]:
    return tuple(lora_specs())


def lora_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """LoRA target -> (input features, output features) of its kernel as a flat matrix (HF's [out, in], transposed)."""
    out = {}
    for name, s in lora_specs().items():
        fan_out, fan_in = s.hf_shape(cfg)
        out[name] = (fan_in, fan_out)
    return out


def peft_modules() -> dict[str, str]:
    """LoRA target -> PEFT module name under a layer ("q" -> "self_attn.q_proj")."""
    return {name: s.peft_module for name, s in lora_specs().items()}

"""Model configuration: one frozen dataclass for the Qwen2 and Llama families.

`ModelConfig.from_hf` reads a HF `config.json` dict in either layout:
  * the one real hub checkpoints carry: `rope_theta` + `rope_scaling` (Qwen2.5-7B, Llama-3.2-1B);
  * the one transformers 5 writes: `rope_parameters` = {"rope_type", "rope_theta", ...}.
`ModelConfig.to_hf` writes the first (hub) layout, which every transformers version reads.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from seal_jax.models.grouped import BACKENDS as LORA_BACKENDS

SUPPORTED_ARCHITECTURES = {"Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama"}
ATTENTION_IMPLEMENTATIONS = ("auto", "einsum", "xla", "cudnn", "splash", "blockwise")  # see seal_jax/models/attention.py


class ConfigError(ValueError):
    """A config.json this project cannot use (one line, names the problem)."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """llama3-style frequency scaling (the only scaling Llama-3.2 uses). None on a config means no scaling."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int
    rope_type: str = "llama3"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    family: str  # "qwen2" | "llama"
    vocab_size: int
    hidden_size: int  # D
    intermediate_size: int  # F
    num_layers: int  # L
    num_heads: int  # H
    num_kv_heads: int  # K (GQA: H % K == 0)
    head_dim: int  # Dh
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-6
    qkv_bias: bool = False
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    # How a ragged multi-adapter token stream applies LoRA (seal_jax.models.grouped): auto | tiled | ragged_dot | dense.
    lora_backend: str = "auto"
    remat: bool = False  # rematerialise each layer in the backward pass
    attention: str = "auto"  # attention backend (ATTENTION_IMPLEMENTATIONS); a runtime choice, not in config.json

    def __post_init__(self):
        if self.family not in ("qwen2", "llama"):
            raise ConfigError(f"unsupported model family {self.family!r} (supported: qwen2, llama)")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.lora_backend not in LORA_BACKENDS:
            raise ConfigError(f"unknown lora_backend {self.lora_backend!r} (allowed: {', '.join(LORA_BACKENDS)})")
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ConfigError(f"unknown attention {self.attention!r} (allowed: {', '.join(ATTENTION_IMPLEMENTATIONS)})")

    @property
    def architecture(self) -> str:
        return {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}[self.family]

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    def num_params(self) -> int:
        from seal_jax.models.schema import num_params
        return num_params(self)

    # ------------------------------------------------------------------ HF config.json
    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], source: str = "config.json") -> "ModelConfig":
        archs = hf.get("architectures") or []
        family = None
        for a in archs:
            family = SUPPORTED_ARCHITECTURES.get(a)
            if family:
                break
        if family is None and not archs:
            family = {"qwen2": "qwen2", "llama": "llama"}.get(hf.get("model_type", ""))
        if family is None:
            name = archs[0] if archs else hf.get("model_type", "<none>")
            raise ConfigError(f"{source}: unsupported architecture {name!r} "
                              f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
        if family == "qwen2" and hf.get("use_sliding_window", False):
            raise ConfigError(f"{source}: use_sliding_window=true is not supported")
        if family == "llama" and (hf.get("attention_bias") or hf.get("mlp_bias")):
            raise ConfigError(f"{source}: llama attention_bias/mlp_bias=true is not supported")
        if hf.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"{source}: hidden_act={hf.get('hidden_act')!r} is not supported (only silu)")
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            if key not in hf:
                raise ConfigError(f"{source}: missing required field {key!r}")

        theta, scaling = _rope_from_hf(hf, source)
        heads = int(hf["num_attention_heads"])
        head_dim = hf.get("head_dim") or int(hf["hidden_size"]) // heads
        eos = hf.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))
        return cls(
            family=family,
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["hidden_size"]),
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            rope_theta=float(theta),
            rope_scaling=scaling,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            qkv_bias=(family == "qwen2"),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=eos_ids,
            pad_token_id=hf.get("pad_token_id"),
        )

    def to_hf(self, dtype: str = "float32") -> dict[str, Any]:
        hf: dict[str, Any] = {
            "architectures": [self.architecture],
            "model_type": self.family,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rope_theta": self.rope_theta,
            "rope_scaling": None if self.rope_scaling is None else {
                "rope_type": self.rope_scaling.rope_type,
                "factor": self.rope_scaling.factor,
                "low_freq_factor": self.rope_scaling.low_freq_factor,
                "high_freq_factor": self.rope_scaling.high_freq_factor,
                "original_max_position_embeddings": self.rope_scaling.original_max_position_embeddings,
            },
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": (list(self.eos_token_ids) if len(self.eos_token_ids) > 1
                             else (self.eos_token_ids[0] if self.eos_token_ids else None)),
            "pad_token_id": self.pad_token_id,
            "initializer_range": 0.02,
            "use_cache": True,
            "torch_dtype": dtype,
        }
        if self.family == "qwen2":
            hf.update(use_sliding_window=False, sliding_window=None, max_window_layers=self.num_layers,
                      attention_dropout=0.0)
        else:
            hf.update(attention_bias=False, mlp_bias=False, attention_dropout=0.0, pretraining_tp=1)
        return hf


def _rope_from_hf(hf: Mapping[str, Any], source: str) -> tuple[float, RopeScaling | None]:
    """(theta, scaling) from either config layout. `rope_parameters` (transformers 5) wins when present."""
    params = hf.get("rope_parameters")
    if params is not None:
        theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
        scaling_dict = params
    else:
        theta = hf.get("rope_theta", 10000.0)
        scaling_dict = hf.get("rope_scaling") or {}
    rope_type = scaling_dict.get("rope_type", scaling_dict.get("type", "default"))
    if rope_type in (None, "default"):
        return theta, None
    if rope_type != "llama3":
        raise ConfigError(f"{source}: unsupported rope scaling type {rope_type!r} (supported: default, llama3)")
    try:
        return theta, RopeScaling(
            factor=float(scaling_dict["factor"]),
            low_freq_factor=float(scaling_dict["low_freq_factor"]),
            high_freq_factor=float(scaling_dict["high_freq_factor"]),
            original_max_position_embeddings=int(scaling_dict["original_max_position_embeddings"]),
        )
    except KeyError as e:
        raise ConfigError(f"{source}: llama3 rope scaling is missing {e.args[0]!r}") from None


# ---------------------------------------------------------------------- presets
_LLAMA32_SCALING = RopeScaling(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                               original_max_position_embeddings=8192)

PRESETS: dict[str, ModelConfig] = {
    # Exact shapes of the real checkpoints (config.json of Qwen/Qwen2.5-7B and meta-llama/Llama-3.2-1B).
    "qwen2.5-7b": ModelConfig(
        family="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28,
        num_heads=28, num_kv_heads=4, head_dim=128, rope_theta=1_000_000.0, rms_norm_eps=1e-6, qkv_bias=True,
        tie_word_embeddings=False, max_position_embeddings=131072, bos_token_id=151643, eos_token_ids=(151643,)),
    "qwen2.5-7b-instruct": ModelConfig(
        family="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28,
        num_heads=28, num_kv_heads=4, head_dim=128, rope_theta=1_000_000.0, rms_norm_eps=1e-6, qkv_bias=True,
        tie_word_embeddings=False, max_position_embeddings=32768, bos_token_id=151643, eos_token_ids=(151645,)),
    "llama-3.2-1b": ModelConfig(
        family="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16,
        num_heads=32, num_kv_heads=8, head_dim=64, rope_theta=500000.0, rope_scaling=_LLAMA32_SCALING,
        rms_norm_eps=1e-5, tie_word_embeddings=True, max_position_embeddings=131072, bos_token_id=128000,
        eos_token_ids=(128001,)),
    "llama-3.2-1b-instruct": ModelConfig(
        family="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16,
        num_heads=32, num_kv_heads=8, head_dim=64, rope_theta=500000.0, rope_scaling=_LLAMA32_SCALING,
        rms_norm_eps=1e-5, tie_word_embeddings=True, max_position_embeddings=131072, bos_token_id=128000,
        eos_token_ids=(128001, 128008, 128009)),
    # Small presets for tests and CPU benchmarks (same code paths: bias + untied for qwen2, llama3 scaling + tied).
    "tiny-qwen2": ModelConfig(
        family="qwen2", vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=16, rope_theta=10000.0, qkv_bias=True, tie_word_embeddings=False,
        max_position_embeddings=2048, bos_token_id=1, eos_token_ids=(2,)),
    "tiny-llama": ModelConfig(
        family="llama", vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=16, rope_theta=500000.0,
        rope_scaling=RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                 original_max_position_embeddings=64),
        rms_norm_eps=1e-5, tie_word_embeddings=True, max_position_embeddings=2048, bos_token_id=1,
        eos_token_ids=(2,)),
    "small-qwen2": ModelConfig(
        family="qwen2", vocab_size=8192, hidden_size=256, intermediate_size=768, num_layers=4, num_heads=8,
        num_kv_heads=2, head_dim=32, rope_theta=1_000_000.0, qkv_bias=True, tie_word_embeddings=False,
        max_position_embeddings=4096, bos_token_id=1, eos_token_ids=(2,)),
    "small-llama": ModelConfig(
        family="llama", vocab_size=8192, hidden_size=256, intermediate_size=1024, num_layers=4, num_heads=8,
        num_kv_heads=2, head_dim=32, rope_theta=500000.0, rope_scaling=_LLAMA32_SCALING, rms_norm_eps=1e-5,
        tie_word_embeddings=True, max_position_embeddings=4096, bos_token_id=1, eos_token_ids=(2,)),
}


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})") from None

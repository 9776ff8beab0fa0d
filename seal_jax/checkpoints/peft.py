"""PEFT LoRA adapter I/O: `adapter_config.json` + `adapter_model.safetensors` <-> `Lora`.

PEFT layout (torch Linear stores [out, in]; PEFT strips the adapter name "default" from the keys when saving):
  base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight [r, in]   -> weights["q"]["a"][i] [in, r]  (.T)
  base_model.model.model.layers.{i}.self_attn.q_proj.lora_B.weight [out, r]  -> weights["q"]["b"][i] [r, out] (.T)
and likewise for k/v/o_proj (self_attn) and gate/up/down_proj (mlp); see `seal_jax.models.schema.peft_modules`.
Keys that still carry the adapter name (`...q_proj.lora_A.default.weight`) are accepted too.

Only plain LoRA on those seven projections, in every layer, with one rank and one alpha, is supported; every other PEFT
feature that changes the math (DoRA, biases, per-module ranks, layer subsets, extra saved modules, ...) is an error.
Every error is one line naming the file and the field or tensor.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from seal_jax.checkpoints.hf import CheckpointError, read_json_file
from seal_jax.lora import Lora, LoraConfig
from seal_jax.models import schema
from seal_jax.models.config import ModelConfig
from seal_jax.models.model import Model, as_dtype

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_BIN_FILE = "adapter_model.bin"

_PREFIX = "base_model.model."
_KEY_RE = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(.+)\.lora_([AB])(\.default)?\.weight$")

# Config fields that must be empty / false: their PEFT feature changes the adapter's math or layout.
_UNSUPPORTED = {
    "use_dora": "DoRA adapters are not supported",
    "layers_to_transform": "adapters on a subset of layers are not supported",
    "rank_pattern": "per-module ranks are not supported",
    "alpha_pattern": "per-module alphas are not supported",
    "modules_to_save": "fully trained extra modules are not supported",
    "trainable_token_indices": "trainable token embeddings are not supported",
    "layer_replication": "layer replication is not supported",
    "target_parameters": "LoRA on parameters (not modules) is not supported",
    "lora_bias": "a bias on lora_B is not supported",
    "alora_invocation_tokens": "activated LoRA (aLoRA) is not supported",
    "use_qalora": "QALoRA is not supported",
    "use_bdlora": "block-diagonal LoRA is not supported",
    "kasa_config": "KaSA is not supported",
    "monteclora_config": "MonteCLoRA is not supported",
    "arrow_config": "Arrow routing is not supported",
}
# init_lora_weights values whose adapters are relative to a modified base model (unless converted when saving).
_BASE_MODIFYING_INITS = ("olora", "pissa", "corda", "loftq", "lora_ga", "mica")


def _model_config(model: Model | ModelConfig) -> ModelConfig:
    return model.config if isinstance(model, Model) else model


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value).replace("\n", " ")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _peft_key(layer: int, name: str, ab: str) -> str:
    return f"{_PREFIX}model.layers.{layer}.{schema.peft_modules()[name]}.lora_{ab}.weight"


def _module_key(layer: int, name: str) -> str:
    """The module name PEFT matches `target_modules` against."""
    return f"model.layers.{layer}.{schema.peft_modules()[name]}"


def _matches(patterns: str | list[str], key: str) -> bool:
    """PEFT's rule: a string is a regex that must match the whole key; a list entry matches the key or a dotted suffix."""
    if isinstance(patterns, str):
        return re.fullmatch(patterns, key) is not None
    return key in patterns or any(key.endswith(f".{p}") for p in patterns)


def read_adapter_config(path: str) -> dict[str, Any]:
    """The validated `adapter_config.json` of a PEFT LoRA adapter directory."""
    cfg_path, cfg = read_json_file(path, ADAPTER_CONFIG_FILE, "adapter")
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object, got {type(cfg).__name__}")

    peft_type = cfg.get("peft_type")
    if peft_type != "LORA":
        raise CheckpointError(f"{cfg_path}: peft_type={_short(peft_type)} is not supported (only 'LORA')")
    if cfg.get("bias", "none") != "none":
        raise CheckpointError(f"{cfg_path}: bias={_short(cfg['bias'])} is not supported (only 'none')")
    if cfg.get("fan_in_fan_out", False):
        raise CheckpointError(f"{cfg_path}: fan_in_fan_out=true is not supported (Conv1D-style weights)")
    for field, why in _UNSUPPORTED.items():
        value = cfg.get(field)
        if value:  # None, False, {}, [] are all "off"
            raise CheckpointError(f"{cfg_path}: {field}={_short(value)}: {why}")
    init = cfg.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(_BASE_MODIFYING_INITS):
        raise CheckpointError(f"{cfg_path}: init_lora_weights={init!r} adapts a modified base model; save it with "
                              "PEFT's path_initial_model_for_weight_conversion to get a plain LoRA adapter")

    r = cfg.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise CheckpointError(f"{cfg_path}: r={_short(r)} is not a positive integer")
    alpha = cfg.get("lora_alpha", 8)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        raise CheckpointError(f"{cfg_path}: lora_alpha={_short(alpha)} is not a number")
    dropout = cfg.get("lora_dropout", 0.0)
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0.0 <= dropout < 1.0:
        raise CheckpointError(f"{cfg_path}: lora_dropout={_short(dropout)} must be a number in [0, 1)")
    targets = cfg.get("target_modules")
    if not (targets is None or isinstance(targets, str)
            or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))):
        raise CheckpointError(f"{cfg_path}: target_modules={_short(targets)} must be a list of names or a regex")
    exclude = cfg.get("exclude_modules")
    if not (exclude is None or isinstance(exclude, str)
            or (isinstance(exclude, list) and all(isinstance(t, str) for t in exclude))):
        raise CheckpointError(f"{cfg_path}: exclude_modules={_short(exclude)} must be a list of names or a regex")
    return cfg


def _listed_targets(cfg: dict[str, Any], model_cfg: ModelConfig) -> dict[str, set[int]]:
    """For a list `target_modules`: our target name -> the layers PEFT would adapt."""
    out: dict[str, set[int]] = {}
    exclude = cfg.get("exclude_modules")
    for name in schema.lora_targets():
        for i in range(model_cfg.num_layers):
            key = _module_key(i, name)
            if _matches(cfg["target_modules"], key) and not (exclude and _matches(exclude, key)):
                out.setdefault(name, set()).add(i)
    return out


def load_adapter(path: str, model: Model | ModelConfig, dtype="float32") -> Lora:
    """Read a PEFT LoRA adapter directory as a single-adapter `Lora` for `model`, cast to `dtype`.

    Every tensor is checked against the model's config: an unknown, missing or mis-shaped tensor is an error naming it.
    `target_modules` given as a list decides the targets (as PEFT matches it); given as a regex (or absent), the
    targets are the modules whose tensors the file holds.
    """
    model_cfg = _model_config(model)
    cfg = read_adapter_config(path)
    cfg_path = os.path.join(path, ADAPTER_CONFIG_FILE)
    fname = ADAPTER_WEIGHTS_FILE
    weights_path = os.path.join(path, fname)
    if not os.path.isfile(weights_path):
        if os.path.isfile(os.path.join(path, ADAPTER_BIN_FILE)):
            raise CheckpointError(f"{path}: only {ADAPTER_WEIGHTS_FILE} is supported, found {ADAPTER_BIN_FILE} "
                                  "(re-save the adapter with safe_serialization=True)")
        raise CheckpointError(f"no {ADAPTER_WEIGHTS_FILE} in {path}")

    L, r = model_cfg.num_layers, cfg["r"]
    shapes = schema.lora_shapes(model_cfg)
    modules = schema.peft_modules()
    targets_in_order = schema.lora_targets()
    ours = {module: name for name, module in modules.items()}  # "self_attn.q_proj" -> "q"
    np_dtype = np.dtype(ml_dtypes.bfloat16) if as_dtype(dtype) == as_dtype("bfloat16") else np.dtype(as_dtype(dtype))

    tensors: dict[tuple[int, str, str], np.ndarray] = {}
    with safe_open(weights_path, framework="numpy") as f:
        for key in f.keys():
            m = _KEY_RE.match(key)
            name = ours.get(m.group(2)) if m else None
            if name is None:
                raise CheckpointError(f"{fname}: unknown tensor {key} for a LoRA adapter of a {model_cfg.architecture}")
            layer, ab = int(m.group(1)), m.group(3)
            if layer >= L:
                raise CheckpointError(f"{fname}: tensor {key} is beyond num_hidden_layers={L}")
            if (layer, name, ab) in tensors:
                raise CheckpointError(f"{fname}: tensor {key} appears twice (with and without the adapter name)")
            w = f.get_tensor(key)
            fan_in, fan_out = shapes[name]
            want = (r, fan_in) if ab == "A" else (fan_out, r)
            if tuple(w.shape) != want:
                raise CheckpointError(f"{fname}: tensor {key} has shape {tuple(w.shape)}, expected {want} "
                                      f"(r={r}, {modules[name]} is {fan_in} -> {fan_out} in this config)")
            tensors[(layer, name, ab)] = w

    present = {name for (_, name, _) in tensors}
    if isinstance(cfg.get("target_modules"), list):
        listed = _listed_targets(cfg, model_cfg)
        if not listed:
            raise CheckpointError(f"{cfg_path}: target_modules={_short(cfg['target_modules'])} names none of "
                                  f"{', '.join(m.split('.')[-1] for m in modules.values())}")
        stray = sorted(present - set(listed), key=targets_in_order.index)
        if stray:
            layer = min(i for (i, n, _) in tensors if n == stray[0])
            raise CheckpointError(f"{fname}: tensor {_peft_key(layer, stray[0], 'A')} is for a module that "
                                  f"target_modules={_short(cfg['target_modules'])} does not name")
        targets = [n for n in targets_in_order if n in listed]
        for n in targets:
            if len(listed[n]) != L:
                raise CheckpointError(f"{cfg_path}: target_modules={_short(cfg['target_modules'])} adapts "
                                      f"{modules[n]} only in layers {sorted(listed[n])}; adapters on a subset "
                                      "of layers are not supported")
    else:
        targets = [n for n in targets_in_order if n in present]
        if not targets:
            raise CheckpointError(f"{fname}: no LoRA tensors in {path}")

    weights = {}
    for name in targets:
        stacked = {}
        for ab in ("A", "B"):
            per_layer = []
            for i in range(L):
                w = tensors.get((i, name, ab))
                if w is None:
                    raise CheckpointError(f"{fname}: missing tensor {_peft_key(i, name, ab)} "
                                          f"(layer {i}, {modules[name]})")
                per_layer.append(w.T)
            stacked[ab] = jnp.asarray(np.stack(per_layer).astype(np_dtype))
        weights[name] = {"a": stacked["A"], "b": stacked["B"]}

    try:
        lora_cfg = LoraConfig(rank=r, alpha=float(cfg.get("lora_alpha", 8)), targets=tuple(targets),
                              dropout=float(cfg.get("lora_dropout", 0.0)), dtype=np.dtype(np_dtype).name,
                              use_rslora=bool(cfg.get("use_rslora", False)))
    except ValueError as e:
        raise CheckpointError(f"{cfg_path}: {e}") from None
    return Lora(lora_cfg, weights)


def save_adapter(lora: Lora, path: str, model: Model | ModelConfig,
                 base_model_name_or_path: str | None = None) -> None:
    """Write a single adapter in PEFT's layout, loadable by `peft.PeftModel.from_pretrained` (and so by vLLM)."""
    if lora.num_adapters is not None:
        raise CheckpointError(f"save_adapter takes a single adapter, got a batch of {lora.num_adapters}; "
                              "use lora.adapter(k) to pick one")
    model_cfg = _model_config(model)
    shapes = schema.lora_shapes(model_cfg)
    modules = schema.peft_modules()
    L, r = model_cfg.num_layers, lora.config.rank
    tensors: dict[str, np.ndarray] = {}
    for name in lora.config.targets:
        a = np.asarray(lora.weights[name]["a"])
        b = np.asarray(lora.weights[name]["b"])
        fan_in, fan_out = shapes[name]
        for ab, w, want in (("a", a, (L, fan_in, r)), ("b", b, (L, r, fan_out))):
            if tuple(w.shape) != want:
                raise CheckpointError(f"LoRA weights[{name!r}][{ab!r}] have shape {tuple(w.shape)}, expected {want} "
                                      "for this model config")
        for i in range(L):
            tensors[_peft_key(i, name, "A")] = np.ascontiguousarray(a[i].T)
            tensors[_peft_key(i, name, "B")] = np.ascontiguousarray(b[i].T)

    alpha = lora.config.alpha
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": r,
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "lora_dropout": lora.config.dropout,
        "target_modules": sorted(modules[n].split(".")[-1] for n in lora.config.targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": lora.config.use_rslora,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, ADAPTER_CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=2)
    save_file(tensors, os.path.join(path, ADAPTER_WEIGHTS_FILE), metadata={"format": "pt"})


__all__ = ["ADAPTER_CONFIG_FILE", "ADAPTER_WEIGHTS_FILE", "load_adapter", "read_adapter_config", "save_adapter"]

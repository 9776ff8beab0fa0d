"""HF checkpoint I/O: `config.json` + `model.safetensors` (or a sharded `model.safetensors.index.json`) <-> `Model`.

The key map is the parameter schema's (`seal_jax.models.schema.PARAMS`): every HF tensor name maps to one leaf of our
parameter tree through a named layout (`schema.LAYOUTS`: HF [out, in] Linear weights transposed, q/k/v/o kept
head-split), and every tensor's shape is checked against the config before it is used. An unknown, missing or
mis-shaped tensor is an error naming the tensor.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import jax
import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from seal_jax.models.config import ConfigError, ModelConfig
from seal_jax.models.schema import LAYOUTS, hf_tensor_names
from seal_jax.models.model import Model, abstract_params, as_dtype

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked (one line, names the file or tensor)."""


_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
# Buffers some exporters write that carry no parameters.
_IGNORED_RE = re.compile(r"(^|\.)rotary_emb\.inv_freq$")


def _get(tree, path: str):
    for p in path.split("/"):
        tree = tree[p]
    return tree


def read_json_file(path: str, name: str, kind: str = "checkpoint") -> tuple[str, Any]:
    """(the file's path, its JSON) of file `name` in directory `path`; a missing directory or file or invalid JSON
    is a one-line `CheckpointError` naming it (`kind` names the directory: checkpoint, adapter)."""
    file_path = os.path.join(path, name)
    if not os.path.isdir(path):
        raise CheckpointError(f"{kind} directory not found: {path}")
    if not os.path.isfile(file_path):
        raise CheckpointError(f"no {name} in {path}")
    try:
        with open(file_path) as f:
            return file_path, json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file_path}: invalid JSON ({e.msg} at line {e.lineno})") from None


def read_config(path: str) -> ModelConfig:
    cfg_path, hf = read_json_file(path, CONFIG_FILE)
    try:
        return ModelConfig.from_hf(hf, source=cfg_path)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


def _weight_files(path: str) -> dict[str, list[str]]:
    """file name -> tensor names it holds (per the index for sharded checkpoints)."""
    index = os.path.join(path, INDEX_FILE)
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: no 'weight_map'")
        files: dict[str, list[str]] = {}
        for name, fname in weight_map.items():
            files.setdefault(fname, []).append(name)
        for fname in files:
            if not os.path.isfile(os.path.join(path, fname)):
                raise CheckpointError(f"{index} names {fname}, which is missing from {path}")
        return files
    single = os.path.join(path, WEIGHTS_FILE)
    if os.path.isfile(single):
        with _open_safetensors(single) as f:
            return {WEIGHTS_FILE: list(f.keys())}
    raise CheckpointError(f"no {WEIGHTS_FILE} or {INDEX_FILE} in {path}")


class _open_safetensors:
    """safe_open whose failures (a truncated or corrupt file, a tensor that cannot be read) are one-line
    CheckpointErrors naming the file."""

    def __init__(self, file: str):
        self.file = file

    def __enter__(self):
        try:
            self.handle = safe_open(self.file, framework="numpy").__enter__()
        except Exception as e:  # safetensors raises its own SafetensorError (and OSError for an unreadable file)
            raise CheckpointError(f"{self.file} is not a readable safetensors file ({_first_line(e)})") from None
        return self

    def keys(self):
        return self.handle.keys()

    def get_tensor(self, name: str):
        try:
            return self.handle.get_tensor(name)
        except Exception as e:
            raise CheckpointError(f"{self.file}: tensor {name} cannot be read, the file is truncated or corrupt "
                                  f"({_first_line(e)})") from None

    def __exit__(self, *exc):
        return self.handle.__exit__(*exc)


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def load_pretrained(path: str, dtype="float32", sharding: Any = None, config: ModelConfig | None = None,
                    allow_nonfinite: bool = False) -> Model:
    """Load a HF checkpoint directory into a `Model`, casting every tensor to `dtype`.

    sharding: None (default device), one `jax.sharding.Sharding` for every leaf, a pytree of shardings shaped like
    the params, or a `jax.sharding.Mesh` (then the project's sharding rules place each leaf; see seal_jax.sharding).
    Each tensor goes from the file straight to its target placement. A tensor holding nan or inf (after the cast:
    an fp32 value beyond bf16's range counts) is refused with CheckpointError naming it, unless `allow_nonfinite`
    (for debugging a broken checkpoint): a model with one non-finite weight answers nothing and trains nothing.
    """
    cfg = config or read_config(path)
    np_dtype = np.dtype(ml_dtypes.bfloat16) if as_dtype(dtype) == as_dtype("bfloat16") else np.dtype(as_dtype(dtype))
    abstract = abstract_params(cfg, dtype)
    expected = hf_tensor_names(cfg)

    # Host buffers in our layout, stacked over layers.
    host = jax.tree.map(lambda a: np.empty(a.shape, np_dtype), abstract)
    seen: set[str] = set()
    for fname, names in _weight_files(path).items():
        with _open_safetensors(os.path.join(path, fname)) as f:
            for name in names:
                if _IGNORED_RE.search(name) or (name == "lm_head.weight" and cfg.tie_word_embeddings):
                    continue
                if name not in expected:
                    m = _LAYER_RE.match(name)
                    if m and int(m.group(1)) >= cfg.num_layers:
                        raise CheckpointError(f"{fname}: tensor {name} is beyond num_hidden_layers={cfg.num_layers}")
                    raise CheckpointError(f"{fname}: unknown tensor {name} for a {cfg.architecture}")
                spec, layer = expected[name]
                target = _get(host, spec.path)
                want = spec.hf_shape(cfg)
                w = f.get_tensor(name)
                if tuple(w.shape) != want:
                    raise CheckpointError(f"{fname}: tensor {name} has shape {tuple(w.shape)}, "
                                          f"expected {want} for this config")
                value = LAYOUTS[spec.layout][0](w, spec.layer_shape(cfg)).astype(np_dtype)
                finite = True if allow_nonfinite else np.isfinite(value)
                if not np.all(finite):
                    bad = int(value.size - np.count_nonzero(finite))
                    raise CheckpointError(f"{fname}: tensor {name} holds {bad} non-finite value(s) (nan or inf"
                                          f"{' after the cast to ' + str(dtype) if np.isfinite(w).all() else ''}); "
                                          f"refusing a broken checkpoint (--allow-nonfinite-weights loads it)")
                if layer is None:
                    target[...] = value
                else:
                    target[layer] = value
                seen.add(name)
    missing = [n for n in expected if n not in seen]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"missing tensor {missing[0]}{more} in {path}")

    params = _place(host, sharding, cfg)
    return Model(cfg, params)


def _place(host, sharding, cfg: ModelConfig):
    if sharding is None:
        return jax.tree.map(jax.device_put, host)
    if isinstance(sharding, jax.sharding.Mesh):
        from seal_jax.sharding import param_shardings
        sharding = param_shardings(cfg, sharding)
    if isinstance(sharding, jax.sharding.Sharding):
        return jax.tree.map(lambda a: jax.device_put(a, sharding), host)
    return jax.tree.map(jax.device_put, host, sharding)


def to_hf_tensors(model: Model) -> dict[str, np.ndarray]:
    """Our params -> {HF tensor name: numpy array} (same dtype)."""
    cfg = model.config
    out = {}
    for name, (spec, layer) in hf_tensor_names(cfg).items():
        w = np.asarray(jax.device_get(_get(model.params, spec.path)))
        if layer is not None:
            w = w[layer]
        out[name] = np.ascontiguousarray(LAYOUTS[spec.layout][1](w))
    return out


def save_pretrained(model: Model, path: str, max_shard_bytes: int | None = None) -> None:
    """Write `config.json` + safetensors in HF layout (sharded with an index when larger than `max_shard_bytes`)."""
    os.makedirs(path, exist_ok=True)
    dtype_name = {np.dtype(ml_dtypes.bfloat16): "bfloat16", np.dtype(np.float16): "float16"}.get(
        np.dtype(model.dtype), "float32")
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump(model.config.to_hf(dtype_name), f, indent=2)
    tensors = to_hf_tensors(model)
    meta = {"format": "pt"}
    total = sum(t.nbytes for t in tensors.values())
    if max_shard_bytes is None or total <= max_shard_bytes:
        save_file(tensors, os.path.join(path, WEIGHTS_FILE), metadata=meta)
        return
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, t in tensors.items():
        if shards[-1] and size + t.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += t.nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(path, fname), metadata=meta)
        weight_map.update({n: fname for n in shard})
    with open(os.path.join(path, INDEX_FILE), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)

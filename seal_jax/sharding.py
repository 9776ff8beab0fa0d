"""The one table of sharding rules: logical axis names -> mesh axes.

Every parameter leaf has logical axes (its row of the parameter schema: `seal_jax.models.schema.param_axes`), and so do
the activations pinned at the layer boundaries (`ACTIVATION_AXES`); `RULES` maps each logical axis to a mesh axis (or
None for replicated). A rule that cannot apply replicates its dimension: a size that does not divide by the mesh axis
(e.g. Qwen2.5-7B's 4 kv heads on an 8-way model axis), a mesh axis an earlier dimension already uses, or a mesh without
that axis. Each such dropped rule is logged once (logger "seal_jax.sharding", WARNING) with the logical axis, its size,
the mesh axis and the reason. Mesh axes: "adapter" (self-edits / data spread across devices) and "model" (tensor
parallel).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from seal_jax.models.config import ModelConfig
from seal_jax.models.schema import param_axes

logger = logging.getLogger(__name__)

RULES: dict[str, str | None] = {
    "adapter": "adapter",  # leading adapter axis of LoRA weights, optimizer state and per-adapter batches
    "batch": "adapter",  # generation rows
    "layers": None,
    "embed": None,
    "vocab": "model",
    "q_heads": "model",
    "kv_heads": "model",
    "head_dim": None,
    "mlp": "model",
    "norm": None,
    "lora_rank": None,
    "length": None,
}

# The residual stream x [B, T, D], pinned at every layer boundary (input and output of each decoder layer) while a
# mesh is set (`mesh_context`): length and hidden by these rules (replicated: the "model" axis splits heads and the
# MLP inside a layer, never the stream between layers). The batch dim is left UNCONSTRAINED for GSPMD to carry what
# the inputs hold: generation rows spread over "adapter", or one adapter's rows under the inner loop's vmap over
# adapters (whose vmapped axis holds "adapter").
ACTIVATION_AXES = ("length", "embed")  # after the batch dim

_logged: set[str] = set()


def _drop(name: str, size: int, mesh_axis: str, reason: str, log: bool) -> None:
    if not log:
        return
    msg = f"sharding rule {name!r} -> {mesh_axis!r} dropped for a dimension of size {size}: {reason}; replicated"
    if msg not in _logged:
        _logged.add(msg)
        logger.warning(msg)


def logical_to_spec(axes: tuple[str, ...], shape: tuple[int, ...], mesh: Mesh,
                    rules: dict[str, str | None] = RULES, log: bool = True) -> P:
    """PartitionSpec for a tensor with these logical axes. A rule that cannot apply (its mesh axis is missing from the
    mesh, already used by an earlier dimension, or does not divide the size) replicates that dimension and is logged
    (unless `log` is False: the planner's what-if meshes)."""
    used: set[str] = set()
    spec = []
    for name, size in zip(axes, shape):
        mesh_axis = rules.get(name)
        if mesh_axis is None:  # replicated by the rules (or a dimension with no logical axis, "_")
            spec.append(None)
            continue
        if mesh_axis not in mesh.shape:
            _drop(name, size, mesh_axis, f"the mesh has no {mesh_axis!r} axis (axes {tuple(mesh.shape)})", log)
        elif mesh_axis in used:
            _drop(name, size, mesh_axis, f"{mesh_axis!r} already shards an earlier dimension of this tensor", log)
        elif size % mesh.shape[mesh_axis] != 0:
            _drop(name, size, mesh_axis,
                  f"{size} does not divide by the {mesh.shape[mesh_axis]}-way {mesh_axis!r} axis", log)
        else:
            spec.append(mesh_axis)
            used.add(mesh_axis)
            continue
        spec.append(None)
    return P(*spec)


def activation_spec(shape: tuple[int, ...], mesh) -> P:
    """The layer-boundary PartitionSpec of an activation [B, T, D] (see ACTIVATION_AXES)."""
    return P(P.UNCONSTRAINED, *logical_to_spec(ACTIVATION_AXES, tuple(shape[1:]), mesh))


def mesh_context(mesh: Mesh | None):
    """`jax.set_mesh(mesh)` (the model then pins its activations on it), or nothing for mesh=None (single device:
    the programs are exactly the unsharded ones)."""
    return contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def param_shardings(cfg: ModelConfig, mesh: Mesh, params: Any = None) -> Any:
    """NamedSharding pytree for the model params (abstract shapes from `cfg` unless `params` is given)."""
    if params is None:
        from seal_jax.models.model import abstract_params
        params = abstract_params(cfg)

    axes = param_axes()

    def one(path, leaf):
        key = _path_str(path)
        if key not in axes:
            raise KeyError(f"no parameter schema row for {key}")
        return NamedSharding(mesh, logical_to_spec(axes[key], leaf.shape, mesh))

    return jax.tree_util.tree_map_with_path(one, params)


def make_mesh(adapter: int = 1, model: int = 1, devices=None) -> Mesh:
    """A 2-D mesh ("adapter", "model") over `adapter * model` devices."""
    devices = jax.devices() if devices is None else devices
    n = adapter * model
    if n > len(devices):
        raise ValueError(f"mesh ({adapter}, {model}) needs {n} devices, only {len(devices)} available")
    return Mesh(np.asarray(devices[:n]).reshape(adapter, model), ("adapter", "model"))

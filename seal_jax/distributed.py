"""Placing models, adapters and inner-loop jobs on a device mesh; multi-host (multi-controller) helpers.

JAX's own runtime is the distributed engine: `jax.distributed.initialize` joins the processes, `jit` with named
shardings (GSPMD) partitions the programs, and every process runs the same code on its addressable shards.

Mesh axes (see `seal_jax.sharding.RULES`): "adapter" spreads self-edits (the leading adapter axis of LoRA weights,
optimiser state and training data, and generation rows) across devices; "model" splits the base weights
tensor-parallel (heads, MLP hidden, vocab). Arrays are built with `jax.make_array_from_callback`, so each process
feeds only the shards it holds; the same code runs on one CPU, one GPU, a multi-GPU host or a TPU pod.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from seal_jax.lora import Lora
from seal_jax.models.model import Model
from seal_jax.sharding import logical_to_spec, make_mesh, param_shardings

__all__ = ["initialize", "is_main_process", "barrier", "make_mesh", "put", "shard_model", "shard_lora",
           "adapter_sharding", "shard_adapter_tree", "gather", "from_main"]


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids=None) -> None:
    """Join a multi-process run. Arguments fall back to SEAL_COORDINATOR / SEAL_NUM_PROCESSES / SEAL_PROCESS_ID;
    with none of them set (TPU pods, SLURM, ...) JAX detects the cluster itself. On CPU, gloo collectives are used."""
    coordinator = coordinator or os.environ.get("SEAL_COORDINATOR")
    if num_processes is None and "SEAL_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["SEAL_NUM_PROCESSES"])
    if process_id is None and "SEAL_PROCESS_ID" in os.environ:
        process_id = int(os.environ["SEAL_PROCESS_ID"])
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS", "") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id, local_device_ids=local_device_ids)
    # Set up the collectives now, while every process is at the same point: gloo gives its first rendezvous only
    # 30 s, which processes that drift apart during compilation on a busy host can exceed.
    barrier("seal_jax_initialized")


def is_main_process() -> bool:
    """Only process 0 writes results and checkpoints' metadata."""
    return jax.process_index() == 0


def barrier(name: str = "seal_jax_barrier") -> None:
    """Wait for every process (a no-op in a single-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def put(host_array, sharding: jax.sharding.Sharding) -> jax.Array:
    """A global array from a host array every process holds (deterministically built); each process supplies only
    its addressable shards. An array that already spans several processes is resharded instead."""
    if isinstance(host_array, jax.Array) and not host_array.is_fully_addressable:
        return jax.device_put(host_array, sharding)
    host_array = np.asarray(host_array)
    return jax.make_array_from_callback(host_array.shape, sharding, lambda idx: host_array[idx])


def shard_model(model: Model, mesh: Mesh) -> Model:
    """The base weights placed by the sharding rules (tensor-parallel over "model", replicated over "adapter")."""
    shardings = param_shardings(model.config, mesh, model.params)
    return Model(model.config, jax.tree.map(put, model.params, shardings))


def adapter_sharding(mesh: Mesh, shape: tuple[int, ...]) -> NamedSharding:
    """Leading axis on "adapter" (when it divides), the rest replicated."""
    axes = ("adapter",) + ("_",) * (len(shape) - 1)
    return NamedSharding(mesh, logical_to_spec(axes, shape, mesh))


def shard_adapter_tree(tree: Any, mesh: Mesh) -> Any:
    """Every leaf with a leading adapter (or row) axis spread over the "adapter" mesh axis."""
    return jax.tree.map(lambda a: put(a, adapter_sharding(mesh, np.shape(a))), tree)


def shard_lora(lora: Lora, mesh: Mesh) -> Lora:
    if lora.num_adapters is None:
        return Lora(lora.config, jax.tree.map(lambda a: put(a, NamedSharding(mesh, P())), lora.weights))
    return Lora(lora.config, shard_adapter_tree(lora.weights, mesh))


def from_main(obj: Any) -> Any:
    """Process 0's value of a JSON-serialisable object, on every process (itself in a single-process run). A
    multi-host run decides what is left to do from process 0's files only: the other processes may see other files
    (their own disks) or the same files mid-write (a shared one), and every process must run the same programs."""
    if jax.process_count() == 1:
        return obj
    import json
    from jax.experimental import multihost_utils
    data = np.frombuffer(json.dumps(obj).encode(), np.uint8) if jax.process_index() == 0 else np.zeros(0, np.uint8)
    n = int(multihost_utils.broadcast_one_to_all(np.int64(len(data))))
    buf = np.zeros(n, np.uint8)
    buf[:len(data)] = data
    return json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(buf))).decode())


def gather(tree: Any) -> Any:
    """Numpy copies of (possibly multi-host) global arrays, on every process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
    return jax.tree.map(np.asarray, tree)

"""orbax checkpoints of training state (a batch of adapters with their optimiser state, or any pytree).

The state is saved as a flat {path: array} dict, so any registered pytree (our `TrainState`, `Lora`, optax states)
round-trips without orbax needing to know its classes; restoring takes a template of the same structure (e.g. the
freshly initialised state) and returns arrays in the template's shardings. Only process 0 decides what is kept, and
orbax coordinates the write across hosts.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def _flat(tree: Any) -> dict[str, Any]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}


def _abstract(leaf):
    sharding = getattr(leaf, "sharding", None)
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)


class StateCheckpointer:
    """Numbered checkpoints of one pytree under `directory` (keeps the last `max_to_keep`)."""

    def __init__(self, directory: str, max_to_keep: int | None = 2):
        self.directory = os.path.abspath(directory)
        self._mgr = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True))

    def save(self, step: int, state: Any) -> None:
        self._mgr.save(int(step), args=ocp.args.StandardSave(_flat(state)))
        self._mgr.wait_until_finished()

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def restore(self, template: Any, step: int | None = None) -> Any:
        """The saved state at `step` (default: latest), with the structure, shapes and shardings of `template`."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        flat_template = _flat(template)
        restored = self._mgr.restore(step, args=ocp.args.StandardRestore(
            {k: _abstract(v) for k, v in flat_template.items()}))
        missing = set(flat_template) - set(restored)
        if missing:
            raise ValueError(f"checkpoint {self.directory}/{step} lacks {sorted(missing)[0]}")
        treedef = jax.tree_util.tree_structure(template)
        return jax.tree_util.tree_unflatten(treedef, [restored[k] for k in flat_template])

    def close(self) -> None:
        self._mgr.close()


def save_policy(path: str, model) -> None:
    """A policy's parameters (a `seal_jax.Model`) as one orbax checkpoint under `path` (a ReST-EM round's output)."""
    StateCheckpointer(path, max_to_keep=1).save(0, model.params)


def load_policy(path: str, like):
    """The policy saved by `save_policy` at `path`, shaped like `like` (a `seal_jax.Model` of the same config), or
    None when nothing was saved there yet (a round not finished)."""
    from seal_jax.models.model import Model
    if not os.path.isdir(path):
        return None
    ck = StateCheckpointer(path, max_to_keep=1)
    if ck.latest_step() is None:
        return None
    return Model(like.config, ck.restore(like.params))

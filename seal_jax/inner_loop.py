"""The batched inner loop: K LoRA fine-tunes (one per self-edit) as one compiled, vmapped program.

Each adapter k has its own dataset (list of `Example`s), learning rate, schedule, step count, batch size, clipping,
weight decay and shuffling seed. `build_plan` lays all of them out as static-shape arrays:

    tokens/weights/segment/kv_segment/positions  [K, N, T]   N rows per adapter (bucketed), T tokens (bucketed)
    batch_index                                  [K, S, Bm]  row index of each batch slot at each step (-1 = empty)
    hyper-parameters                             [K]         lr, schedule id, warm-up, total steps, clip, decay

`train` then runs steps [start, end) of every adapter in one `jit` (a `fori_loop` over steps whose body `vmap`s the
loss and its gradient over the adapter axis with the frozen base shared, not copied). An adapter whose step counter has
passed its own total, or whose loss or gradient went non-finite, stops updating: its weights and AdamW moments are
kept as they were, and a non-finite value marks it failed without touching any other adapter.

Optimiser: `seal_jax.optim.adamw` (torch's AdamW + clip_grad_norm_ + HF's schedules as one optax chain), built per
adapter from that adapter's hyper-parameter arrays. Loss: mean token cross-entropy over the target tokens of the batch
(as HF Trainer for causal LMs), computed in token chunks (`seal_jax.losses`), never as full [tokens, V] fp32 logits.

Loss masks (`loss_mode`):
  "all"            every real token is a target (padding is masked);
  "completion"     only tokens the Example marks (e.g. the completion after a prompt);
  "compat_padding" the original SEAL trainer: every example right-padded with `pad_id` (eos) to `compat_length`
                   (2048 there), pad tokens invisible as attention keys but *trained* to predict pad (unmasked labels).
Packing (`pack=True`): examples are packed first-fit into rows with segment ids and restarted positions; a row is then
the unit of shuffling and batching.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from seal_jax import optim
from seal_jax.buckets import batch_bucket, bucket
from seal_jax.losses import next_token_nll
from seal_jax.lora import Lora
from seal_jax.models.model import Model
from seal_jax.sharding import mesh_context

LOSS_MODES = ("all", "completion", "compat_padding")
SCHEDULES = optim.SCHEDULES  # the inner loop's public vocabulary (TrainSpec.schedule), defined with the optimiser
lr_at = optim.lr_at


@dataclasses.dataclass(frozen=True)
class Example:
    """One training sequence: token ids and, per token, whether it is a target (used by loss_mode="completion")."""

    tokens: tuple[int, ...]
    loss_mask: tuple[int, ...] | None = None
    # Trailing pad tokens (the pad id of the plan / engine) after `tokens`, as the original ARC trainer's
    # padding="longest" leaves them: trained on (label = pad) whatever the loss mode, never attention keys.
    pads: int = 0

    @classmethod
    def from_prompt_completion(cls, prompt: Sequence[int], completion: Sequence[int]) -> "Example":
        return cls(tuple(prompt) + tuple(completion), (0,) * len(prompt) + (1,) * len(completion))

    def mask(self) -> tuple[int, ...]:
        return self.loss_mask if self.loss_mask is not None else (1,) * len(self.tokens)

    def laid_out(self, loss_mode: str, pad_id: int, max_length: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(tokens [L], loss weights [L], n) cut to `max_length`: the first n positions are the sequence's own
        tokens (attention keys), the rest its trailing pads (in the loss, not keys)."""
        n = min(len(self.tokens), max_length)
        L = min(n + self.pads, max_length)
        toks = np.full(L, pad_id, np.int32)
        toks[:n] = self.tokens[:n]
        w = np.ones(L, np.float32)
        if loss_mode == "completion":
            w[:n] = self.mask()[:n]
        return toks, w, n


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """Per-adapter optimisation settings (the defaults are the original SEAL knowledge-incorporation ones)."""

    learning_rate: float = 1e-3
    schedule: str = "linear"
    warmup_steps: int = 0
    epochs: int = 10
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 1
    max_grad_norm: float = 1.0  # <= 0 disables clipping
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r} (choose from {', '.join(SCHEDULES)})")
        for name in ("learning_rate", "max_grad_norm", "weight_decay"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"TrainSpec.{name} must be a finite number, got {v!r}")
        if self.learning_rate < 0 or self.weight_decay < 0:
            raise ValueError(f"TrainSpec: learning_rate and weight_decay must be >= 0, got {self.learning_rate} and "
                             f"{self.weight_decay}")
        if self.batch_size < 1 or self.epochs < 0 or self.warmup_steps < 0 or (self.max_steps or 0) < 0:
            raise ValueError(f"TrainSpec: batch_size must be >= 1 and epochs, warmup_steps, max_steps >= 0 "
                             f"(got {self.batch_size}, {self.epochs}, {self.warmup_steps}, {self.max_steps})")


@dataclasses.dataclass
class TrainPlan:
    """Static-shape arrays for one batched inner-loop job (see module docstring)."""

    tokens: np.ndarray
    weights: np.ndarray
    segment_ids: np.ndarray
    kv_segment_ids: np.ndarray
    positions: np.ndarray
    batch_index: np.ndarray
    total_steps: np.ndarray
    learning_rate: np.ndarray
    schedule: np.ndarray
    warmup_steps: np.ndarray
    max_grad_norm: np.ndarray
    weight_decay: np.ndarray
    seeds: np.ndarray
    real_tokens: np.ndarray  # [K] real (non-padding) tokens of the batches, summed over all steps

    @property
    def num_adapters(self) -> int:
        return self.tokens.shape[0]

    @property
    def max_steps(self) -> int:
        return int(self.total_steps.max()) if self.total_steps.size else 0

    def token_slots(self) -> int:
        """Token positions the compiled step computes to train every adapter to the end: all K adapters x the
        longest adapter's steps x the batch bucket x the row length (finished and empty adapters included)."""
        K, _, T = self.tokens.shape
        return K * self.max_steps * self.batch_index.shape[2] * T

    def arrays(self, mesh=None) -> dict[str, jnp.ndarray]:
        """Device arrays of the plan; with a mesh, the adapter axis is spread over its "adapter" axis and each
        process supplies only its own shards."""
        host = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "real_tokens"}
        if mesh is None:
            return {k: jnp.asarray(v) for k, v in host.items()}
        from seal_jax.distributed import shard_adapter_tree
        return shard_adapter_tree(host, mesh)


def compat_padded(ex: Example, compat_length: int) -> Example:
    """The original SEAL trainer's example (loss mode "compat_padding"): right-padded with the pad id to
    `compat_length` (cut there when longer), every label trained, pads not attention keys. Lay it out with loss mode
    "all" and max_length = compat_length."""
    return dataclasses.replace(ex, pads=max(compat_length - len(ex.tokens), 0))


def _rows_for(examples: Sequence[Example], loss_mode: str, pad_id: int, max_length: int, compat_length: int,
              pack: bool, length: int):
    """One adapter's examples -> list of (tokens, weights, seg, kv_seg, pos) rows, each `length` long."""
    rows = []
    if loss_mode == "compat_padding":  # one example per row, padded to compat_length, every position trained
        examples = [compat_padded(ex, compat_length) for ex in examples]
        loss_mode, max_length, pack = "all", compat_length, False

    def new_row():
        return [np.zeros(length, np.int32), np.zeros(length, np.float32), np.zeros(length, np.int32),
                np.zeros(length, np.int32), np.zeros(length, np.int32), 0, 0]  # tok, w, seg, kv, pos, used, n_seg

    current = None
    for ex in examples:
        toks, mask, keys = ex.laid_out(loss_mode, pad_id, max_length)
        n = len(toks)
        if current is None or not pack or current[5] + n > length:
            if current is not None:
                rows.append(current)
            current = new_row()
        used, sid = current[5], current[6] + 1
        current[0][used:used + n] = toks
        current[1][used:used + n] = mask
        current[2][used:used + n] = sid
        current[3][used:used + keys] = sid  # trailing pads are queries of the sequence, not keys
        current[4][used:used + n] = np.arange(n)
        current[5], current[6] = used + n, sid
    if current is not None:
        rows.append(current)
    return [tuple(r[:5]) for r in rows]


def batch_schedule(n: int, spec: TrainSpec) -> list[np.ndarray]:
    """The item indices of every optimiser step of one adapter with `n` items (rows): a fresh shuffle per epoch from
    the adapter's own seed, batches of min(batch_size, n), a short last batch per epoch, `max_steps` (when set) or
    epochs x batches-per-epoch steps. Shared by the padded plan and the ragged engine, so both see the same batches."""
    bs = min(spec.batch_size, max(n, 1))
    per_epoch = -(-n // bs) if n else 0
    total = (spec.max_steps if spec.max_steps is not None else per_epoch * spec.epochs) if n else 0
    order_rng = np.random.default_rng(spec.seed)
    steps: list[np.ndarray] = []
    while len(steps) < total:
        perm = order_rng.permutation(n)  # a fresh shuffle every epoch, from the adapter's own seed
        for i in range(per_epoch):
            steps.append(perm[i * bs:(i + 1) * bs])
            if len(steps) == total:
                break
    return steps


def build_plan(datasets: Sequence[Sequence[Example]], specs: Sequence[TrainSpec] | TrainSpec,
               loss_mode: str = "all", pad_id: int = 0, max_length: int = 2048, compat_length: int = 2048,
               pack: bool = False, length_buckets: Sequence[int] | None = None,
               num_adapters: int | None = None) -> TrainPlan:
    """Lay out K adapters' datasets and settings as static-shape arrays.

    num_adapters: pad the job to this many adapters with empty ones (0 steps), so K never changes the compiled shape.
    """
    if loss_mode not in LOSS_MODES:
        raise ValueError(f"unknown loss_mode {loss_mode!r} (choose from {', '.join(LOSS_MODES)})")
    K_real = len(datasets)
    if isinstance(specs, TrainSpec):
        specs = [specs] * K_real
    if len(specs) != K_real:
        raise ValueError(f"{len(specs)} TrainSpecs for {K_real} datasets")
    K = num_adapters or K_real
    if K < K_real:
        raise ValueError(f"num_adapters={K} is smaller than the {K_real} datasets given")

    if loss_mode == "compat_padding":
        length = bucket(compat_length, length_buckets)
    else:
        longest = max((min(len(e.tokens) + e.pads, max_length) for d in datasets for e in d), default=1)
        length = bucket(longest, length_buckets)
    per_adapter = [_rows_for(d, loss_mode, pad_id, max_length, compat_length, pack, length) for d in datasets]
    N = batch_bucket(max((len(r) for r in per_adapter), default=1))

    schedules = [batch_schedule(len(rows), spec) for rows, spec in zip(per_adapter, specs)]
    S = bucket(max((len(s) for s in schedules), default=1), minimum=1)
    Bm = batch_bucket(max((min(sp.batch_size, max(len(r), 1)) for r, sp in zip(per_adapter, specs)), default=1))

    arr = {name: np.zeros((K, N, length), dt) for name, dt in
           [("tokens", np.int32), ("weights", np.float32), ("segment_ids", np.int32),
            ("kv_segment_ids", np.int32), ("positions", np.int32)]}
    batch_index = np.full((K, S, Bm), -1, np.int32)
    real_tokens = np.zeros((K,), np.int64)
    for k, (rows, steps) in enumerate(zip(per_adapter, schedules)):
        for i, (tok, w, seg, kv, pos) in enumerate(rows):
            arr["tokens"][k, i], arr["weights"][k, i], arr["segment_ids"][k, i] = tok, w, seg
            arr["kv_segment_ids"][k, i], arr["positions"][k, i] = kv, pos
        for s, idx in enumerate(steps):
            batch_index[k, s, :len(idx)] = idx
            real_tokens[k] += int((arr["kv_segment_ids"][k, idx] > 0).sum())  # compat pads are not real tokens
    hyper = lambda f, dt, fill: np.asarray([f(sp) for sp in specs] + [fill] * (K - K_real), dt)
    return TrainPlan(
        **arr, batch_index=batch_index,
        total_steps=np.asarray([len(s) for s in schedules] + [0] * (K - K_real), np.int32),
        learning_rate=hyper(lambda sp: sp.learning_rate, np.float32, 0.0),
        schedule=hyper(lambda sp: SCHEDULES[sp.schedule], np.int32, 0),
        warmup_steps=hyper(lambda sp: sp.warmup_steps, np.int32, 0),
        max_grad_norm=hyper(lambda sp: sp.max_grad_norm, np.float32, 0.0),
        weight_decay=hyper(lambda sp: sp.weight_decay, np.float32, 0.0),
        seeds=hyper(lambda sp: sp.seed, np.int32, 0),
        real_tokens=real_tokens)


# ---------------------------------------------------------------------------------------------- training state
@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything that changes during training (a pytree; checkpointable as is)."""

    lora: Lora  # batch of K adapters
    opt_state: Any  # optax.scale_by_adam state, leading K axis
    step: jax.Array  # [K] optimiser steps applied (== the next step's index)
    failed: jax.Array  # [K] bool: loss or gradient went non-finite
    losses: jax.Array  # [K, S] loss at each step (nan where not taken)
    grad_norms: jax.Array  # [K, S] pre-clipping global gradient norm


jax.tree_util.register_dataclass(TrainState, data_fields=["lora", "opt_state", "step", "failed", "losses",
                                                          "grad_norms"], meta_fields=[])


def init_state(lora: Lora, plan: TrainPlan, mesh=None) -> TrainState:
    """Fresh optimiser state for a batch of K adapters (spread over the mesh's "adapter" axis when given)."""
    K = plan.num_adapters
    if lora.num_adapters != K:
        raise ValueError(f"the LoRA batch has {lora.num_adapters} adapters, the plan {K}")
    S = plan.batch_index.shape[1]
    lora = jax.tree.map(jnp.copy, lora)  # training donates its state; the caller's arrays stay valid
    state = TrainState(lora=lora, opt_state=jax.vmap(optim.init_state)(lora.weights),
                       step=jnp.zeros((K,), jnp.int32), failed=jnp.zeros((K,), bool),
                       losses=jnp.full((K, S), jnp.nan, jnp.float32), grad_norms=jnp.full((K, S), jnp.nan, jnp.float32))
    if mesh is not None:
        from seal_jax.distributed import shard_adapter_tree
        state = shard_adapter_tree(state, mesh)
    return state


def token_loss(model: Model, lora_tree, tokens, weights, segment_ids, kv_segment_ids, positions, slot_valid):
    """Mean next-token cross-entropy over target tokens of a batch [Bm, T]; returns (loss, n_targets)."""
    hidden, _ = model.apply(tokens, positions, segment_ids, lora=lora_tree, kv_segment_ids=kv_segment_ids,
                            output="hidden")  # [Bm, T, D]
    nll, same = next_token_nll(hidden, model.head(), tokens, segment_ids)  # [Bm, T-1] each
    w = weights[:, 1:] * same * slot_valid[:, None]
    n = jnp.sum(w)
    return jnp.sum(nll * w) / jnp.maximum(n, 1.0), n


def optimizer(hp) -> optax.GradientTransformation:
    """The chain of one adapter from its hyper-parameter arrays (learning_rate, schedule, warmup_steps,
    total_steps, max_grad_norm, weight_decay)."""
    return optim.adamw(optim.hf_schedule(hp["learning_rate"], hp["schedule"], hp["warmup_steps"],
                                         hp["total_steps"]), hp["max_grad_norm"], hp["weight_decay"])


def _adapter_step(model: Model, lora_cfg, weights, opt_state, step, failed, data, hp):
    """One optimiser step of one adapter (vmapped over adapters by `train`)."""
    s = step  # this adapter's step index
    idx = data["batch_index"][jnp.minimum(s, data["batch_index"].shape[0] - 1)]  # [Bm]
    slot_valid = (idx >= 0).astype(jnp.float32)
    rows = jnp.maximum(idx, 0)
    batch = {k: data[k][rows] for k in ("tokens", "weights", "segment_ids", "kv_segment_ids", "positions")}
    dropout_key = jax.random.fold_in(jax.random.PRNGKey(hp["seeds"]), s)

    def loss_fn(w):
        tree = Lora(lora_cfg, w).layer_tree(dropout_key)
        return token_loss(model, tree, batch["tokens"], batch["weights"], batch["segment_ids"],
                          batch["kv_segment_ids"], batch["positions"], slot_valid)

    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(weights)
    gnorm = optax.global_norm(grads)
    updates, new_opt = optimizer(hp).update(grads, opt_state, weights)
    new_weights = optax.apply_updates(weights, updates)

    active = (s < hp["total_steps"]) & ~failed
    finite = jnp.isfinite(loss) & jnp.isfinite(gnorm)
    apply = active & finite
    return (optim.apply_where(apply, new_weights, weights), optim.apply_where(apply, new_opt, opt_state),
            step + apply.astype(jnp.int32), failed | (active & ~finite), jnp.where(active, loss, jnp.nan),
            jnp.where(active, gnorm, jnp.nan))


@functools.partial(jax.jit, donate_argnames=("state",))
def _train_chunk(model: Model, state: TrainState, plan: dict, num_steps) -> TrainState:
    """`num_steps` (traced: any count reuses one compiled program) optimiser steps of every adapter."""
    lora_cfg = state.lora.config
    data = {k: plan[k] for k in ("tokens", "weights", "segment_ids", "kv_segment_ids", "positions", "batch_index")}
    hp = {k: plan[k] for k in ("total_steps", "learning_rate", "schedule", "warmup_steps", "max_grad_norm",
                               "weight_decay", "seeds")}
    step_all = jax.vmap(functools.partial(_adapter_step, model, lora_cfg))

    def body(_, st: TrainState):
        pos = st.step
        w, o, step, failed, loss, gnorm = step_all(st.lora.weights, st.opt_state, st.step, st.failed, data, hp)
        S = st.losses.shape[1]
        col = jnp.minimum(pos, S - 1)
        rows = jnp.arange(st.losses.shape[0])
        losses = st.losses.at[rows, col].set(jnp.where(jnp.isnan(loss), st.losses[rows, col], loss))
        gnorms = st.grad_norms.at[rows, col].set(jnp.where(jnp.isnan(gnorm), st.grad_norms[rows, col], gnorm))
        return TrainState(Lora(lora_cfg, w), o, step, failed, losses, gnorms)

    return jax.lax.fori_loop(0, num_steps, body, state)


def train(model: Model, state: TrainState, plan: TrainPlan, num_steps: int | None = None,
          chunk: int | None = None, callback=None, mesh=None) -> TrainState:
    """Run `num_steps` more optimiser steps of every adapter (default: until all adapters are done).

    chunk: steps per compiled call (default: all at once); `callback(state)` runs after each chunk, e.g. to write a
    checkpoint. Resuming from a saved state with the same plan gives exactly the never-stopped result.
    mesh: run sharded (state from `init_state(..., mesh=mesh)`, model from `distributed.shard_model`).
    """
    arrays = plan.arrays(mesh)
    if num_steps is None:
        from seal_jax.distributed import gather
        step, failed = gather((state.step, state.failed))
        num_steps = int(np.max(np.where(failed, 0, plan.total_steps - step), initial=0))
    remaining = max(num_steps, 0)
    while remaining > 0:
        n = remaining if chunk is None else min(chunk, remaining)
        with mesh_context(mesh):  # the model pins its layer-boundary activations on the mesh
            state = _train_chunk(model, state, arrays, jnp.int32(n))
        remaining -= n
        if callback is not None:
            callback(state)
    return state


def train_adapters(model: Model, lora: Lora, plan: TrainPlan, mesh=None, **kw) -> TrainState:
    """Convenience: init the optimiser state for `lora` (a batch of K adapters) and train to the end."""
    return train(model, init_state(lora, plan, mesh), plan, mesh=mesh, **kw)

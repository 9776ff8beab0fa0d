"""The ragged multi-adapter engine: a stream of LoRA fine-tuning jobs over one frozen base, every optimiser step one
packed token stream that holds only real work.

    engine = Engine(model, LoraConfig(32, 64.0), EngineConfig(slots=64, max_tokens_per_step=4096))
    for done in engine.run([Job(examples, TrainSpec(...), init_seed=s) for ...]):   # finished jobs, as they finish
        done.lora, done.losses, done.failed, ...

Slots. K = min(EngineConfig.slots, jobs) adapters are resident (LoRA weights and AdamW state with a leading slot
axis: every resident slot costs optimiser and LoRA work each step, so a stream of few jobs holds no idle ones
(`stream_slots`)). Jobs are admitted in order
into free slots (fresh LoRA from the job's seed, `init_lora(cfg, lora_cfg, PRNGKey(init_seed))`, zero AdamW state);
when a job's last step is taken its adapter is handed out (`Finished`) and the slot takes the next job.

Global steps. In one global step every selected slot takes exactly one optimiser step of its own job: its next batch
(the same batches, in the same order, as the padded plan would give it: `inner_loop.batch_schedule`) is packed with
the other selected slots' batches, first fit, into R rows of T tokens (segment ids and restarted positions), then the
frozen base runs once over the R x T stream and each token's LoRA term uses its own slot's adapter (a grouped matmul
over the stream's contiguous runs of one slot: `seal_jax.models.grouped`). Loss, target counts, gradient norms,
clipping and the AdamW update are per slot (segment sums over the slot of each token). Slots that are not selected
(no room this step, finished, empty) contribute no tokens and are left untouched. An adapter therefore follows
exactly its own trajectory whatever else shares the stream, and equals training it alone (tests/test_engine.py).

Shapes. T is a length bucket of the longest sequence of the stream; R is chosen per call as the largest power of two
whose R x T capacity the selected slots' demand fills (at most max_tokens_per_step), so steps stay full as the
stream drains; one program is compiled per (R, T) bucket. `steps_per_call` global steps run in one jit call
(`lax.fori_loop` over host-packed [steps, R, T] arrays); jobs are admitted and finished adapters extracted between
calls. Slot selection: oldest job first while jobs wait to be admitted (so jobs finish and slots refill), most
remaining tokens first once the queue is empty (so the last jobs end together).

Loss. Chunked cross-entropy (`seal_jax.losses`); when fewer than half the positions of a call's steps carry loss
(completion-only masks: ARC's output-token strategy), only those positions are gathered and projected onto the
vocabulary, in a bucketed count C per call.

Meshes. With a ("adapter", "model") mesh the engine runs A = mesh.shape["adapter"] shards side by side, one
`shard_map` over "adapter" around the call: jobs are assigned to shards by `balance` (by tokens, longest first; a
pure function of the jobs, so every process of a multi-controller run agrees without communicating), each shard has
its own K slots (`EngineConfig.slots` and `max_tokens_per_step` are per shard), its own queue and refills, and packs
its own R x T streams; LoRA weights and AdamW state are sharded by slot. The frozen base is placed by the sharding
rules (`seal_jax.sharding`: tensor-parallel over "model", which the shard_map leaves automatic). Every shard's call
has the same shape (R: the most any shard asks for; steps: the most any shard has; a shard without work runs empty
steps). Host arrays reach the devices through `distributed.put` (each process its own shards), results come back
through `distributed.gather`, and a finished adapter is replicated to every device.

Isolation. A slot whose adapter goes non-finite or blows up is failed at that step and leaves the stream at once:
its tokens in the rest of the call are turned into padding, and loss terms are selected (not multiplied) so no
position's value crosses into another slot's loss; a slot refilled after a failure starts with a fresh LoRA, zero
AdamW state, step 0 and no flags.

Accounting (`Engine.stats`): token slots computed (steps x A x R x T: every slot of every shard counted, idle ones
too) and real tokens (the non-padding tokens of the batches trained; a failed job's batches dropped after its
failure are not counted), so `real / slots` is the useful fraction of the compiled work; per shard, its real tokens
and the token slots of the steps in which it had work (`shard_real_tokens`, `shard_busy_slots`).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from seal_jax import inner_loop as il
from seal_jax import optim
from seal_jax.buckets import bucket
from seal_jax.losses import next_token_nll, token_nll
from seal_jax.lora import Lora, LoraConfig, init_lora
from seal_jax.models.model import Model

__all__ = ["Engine", "EngineConfig", "Finished", "Job", "TRACE_COUNTS", "stream_slots"]

TRACE_COUNTS: collections.Counter = collections.Counter()  # compilations of the engine's programs (tests read it)


@dataclasses.dataclass(frozen=True)
class Job:
    """One fine-tune: its training examples, its settings, its LoRA initialisation seed and a caller's handle."""

    examples: Sequence[il.Example]
    spec: il.TrainSpec
    init_seed: int = 0
    key: Any = None


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    slots: int = 64  # the most adapters resident at once (a stream of n jobs holds K = min(slots, n): stream_slots)
    max_tokens_per_step: int = 4096  # the largest R x T capacity of one global step
    steps_per_call: int = 8  # global steps per compiled call (jobs are admitted / handed out between calls)
    loss_mode: str = "all"  # as inner_loop: "all" | "completion" | "compat_padding"
    pad_id: int = 0
    max_length: int = 2048  # sequences are cut to this many tokens
    compat_length: int = 2048  # compat_padding: every sequence padded with pad_id to this length, pads trained
    row_length: int | None = None  # T (default: the bucket of the longest sequence of the stream)
    length_buckets: tuple[int, ...] | None = None
    remat: bool | str = "auto"  # rematerialise layers: "auto" = where it pays (planner.engine_remat), or as given

    def __post_init__(self):
        if self.loss_mode not in il.LOSS_MODES:
            raise ValueError(f"unknown loss_mode {self.loss_mode!r} (choose from {', '.join(il.LOSS_MODES)})")
        if self.slots < 1 or self.max_tokens_per_step < 1 or self.steps_per_call < 1:
            raise ValueError(f"invalid EngineConfig {self}")


@dataclasses.dataclass
class Finished:
    """A finished job: its index in the stream, the trained adapter (a single `Lora`), and what training did."""

    index: int
    job: Job
    lora: Lora
    steps: int
    total_steps: int
    losses: list[float]
    grad_norms: list[float]
    real_tokens: int
    failed: bool = False
    failure: str | None = None


@dataclasses.dataclass
class _Seq:
    tokens: np.ndarray  # [n] int32
    weights: np.ndarray  # [n] float32 (target mask)
    keys: np.ndarray  # [n] bool: is an attention key (False only for compat padding)

    @property
    def real(self) -> int:
        return int(self.keys.sum())


@dataclasses.dataclass
class _Active:
    index: int
    job: Job
    seqs: list[_Seq]
    batches: list[np.ndarray]
    admitted: int  # admission order
    step: int = 0
    losses: list = dataclasses.field(default_factory=list)
    grad_norms: list = dataclasses.field(default_factory=list)
    real_tokens: int = 0

    def batch_len(self, s: int) -> int:
        return sum(len(self.seqs[i].tokens) for i in self.batches[s])

    def remaining_tokens(self) -> int:
        return sum(self.batch_len(s) for s in range(self.step, len(self.batches)))

    @property
    def done(self) -> bool:
        return self.step >= len(self.batches)


def _sequences(examples: Sequence[il.Example], cfg: EngineConfig) -> list[_Seq]:
    out = []
    for ex in examples:
        if cfg.loss_mode == "compat_padding":  # labels = input_ids, pads included (il.compat_padded)
            toks, w, n = il.compat_padded(ex, cfg.compat_length).laid_out("all", cfg.pad_id, cfg.compat_length)
        else:
            toks, w, n = ex.laid_out(cfg.loss_mode, cfg.pad_id, cfg.max_length)
        keys = np.zeros(len(toks), bool)
        keys[:n] = True  # an example's trailing pads (Example.pads) are in the loss but not attention keys
        out.append(_Seq(toks, w, keys))
    return out


# ------------------------------------------------------------------------------------------------ device programs
@dataclasses.dataclass(frozen=True)
class SlotState:
    """The resident adapters (a pytree): K LoRA adapters, their AdamW states, steps taken and failure flags."""

    lora: Lora  # weights [K, L, ...]
    opt_state: Any  # optim.adamw state, leading K axis
    step: jax.Array  # [K] int32
    failed: jax.Array  # [K] bool
    diverged: jax.Array  # [K] bool: failed because an update blew up (DIVERGED), not because a value went non-finite


jax.tree_util.register_dataclass(SlotState, data_fields=["lora", "opt_state", "step", "failed", "diverged"],
                                 meta_fields=[])

# An update whose norm exceeds this multiple of (the weights' norm + 1) has blown up: the adapter is failed before it
# is applied (an lr of 1e30 stays finite in fp32, and the normalised model keeps its loss finite, but its weights are
# useless). Ordinary steps move LoRA weights by far less than their own norm.
DIVERGED = 1e3


def _fresh(model_cfg, lora_cfg: LoraConfig, seed):
    return init_lora(model_cfg, lora_cfg, jax.random.PRNGKey(seed)).weights


def _finite_slots(weights) -> jax.Array:
    """[K] bool: every LoRA weight of slot k is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(w).reshape(w.shape[0], -1), axis=1)
                              for w in jax.tree.leaves(weights)]), axis=0)


def _admit(model_cfg, state: SlotState, reset, seeds) -> SlotState:
    """Slots with reset[k] get a fresh adapter from seeds[k], zero AdamW state, step 0, no flags; an adapter whose
    weights are not finite is failed at once (it never enters the stream: updates are applied only when finite, so
    admission is where non-finite weights could come in)."""
    lora_cfg = state.lora.config

    def renew(st):
        fresh = jax.vmap(functools.partial(_fresh, model_cfg, lora_cfg))(seeds)  # [K, ...]
        keep = lambda new, old: jax.tree.map(
            lambda n, o: jnp.where(reset.reshape((-1,) + (1,) * (o.ndim - 1)), n, o), new, old)
        opt = jax.vmap(optim.init_state)(fresh)
        # (behind a barrier: B starts as zeros, and XLA would constant-fold the check of a broadcast for seconds)
        unusable = reset & ~_finite_slots(jax.lax.optimization_barrier(fresh))
        return SlotState(Lora(lora_cfg, keep(fresh, st.lora.weights)), keep(opt, st.opt_state),
                         jnp.where(reset, 0, st.step), (st.failed & ~reset) | unusable, st.diverged & ~reset)

    return jax.lax.cond(jnp.any(reset), renew, lambda st: st, state)


def _global_step(model: Model, state: SlotState, batch, hp):
    """One optimiser step of every selected slot over one packed stream (see the module docstring).

    batch: tokens / positions / segment_ids / kv_segment_ids [R, T] int32, weights [R, T] float32,
           token_slot [R*T] int32 (-1: padding), group_ids / group_sizes [Gm] int32, stepping [K] bool, and when
           only some positions carry loss, target_index [C] int32 (their indices among the R*(T-1) predicting
           positions, `targets` of them real): only those are projected onto the vocabulary.
    hp: per-slot hyper-parameters [K] (learning_rate, schedule, warmup_steps, total_steps, max_grad_norm,
        weight_decay). Returns (state, loss [K], grad norm [K]) with nan for slots that did not step.
    """
    lora_cfg = state.lora.config
    K = state.step.shape[0]
    R, T = batch["tokens"].shape
    # A slot that failed at an earlier step of this call leaves the stream: its tokens, packed on the host before
    # the call, become padding (its non-finite weights would otherwise reach its neighbours through the backward).
    batch = _drop_slots(batch, state.failed)

    def loss_fn(w, batch):
        tree = Lora(lora_cfg, w).ragged_tree(batch["group_ids"], batch["group_sizes"])
        hidden, _ = model.apply(batch["tokens"], batch["positions"], batch["segment_ids"], lora=tree,
                                kv_segment_ids=batch["kv_segment_ids"], output="hidden")  # [R, T, D]
        seg_ids = batch["segment_ids"]
        same = (seg_ids[:, 1:] == seg_ids[:, :-1]) & (seg_ids[:, 1:] > 0)  # a target continues its own sequence
        w_tok = (batch["weights"][:, 1:] * same).reshape(-1)  # [R*(T-1)]
        slot = batch["token_slot"].reshape(R, T)[:, 1:].reshape(-1)  # the slot of each target
        if "target_index" in batch:  # only the C positions with a loss are projected onto the vocabulary
            idx = batch["target_index"]  # [C] into the R*(T-1) predicting positions (padding entries: weight 0)
            h = hidden[:, :-1].reshape(-1, hidden.shape[-1])[idx]  # [C, D]
            nll = token_nll(h, model.head(), batch["tokens"][:, 1:].reshape(-1)[idx])  # [C]
            w_tok, slot = w_tok[idx] * (jnp.arange(idx.shape[0]) < batch["targets"]), slot[idx]
        else:
            nll = next_token_nll(hidden, model.head(), batch["tokens"], seg_ids)[0].reshape(-1)  # [R*(T-1)]
        seg = jnp.where(slot >= 0, slot, K)
        # A select, not a product: a position without a loss (the last token of one sequence predicting the next
        # sequence's first, padding) may hold a non-finite nll from another slot's adapter, and 0 * nan = nan.
        tot = jax.ops.segment_sum(jnp.where(w_tok > 0, nll * w_tok, 0.0), seg, num_segments=K + 1)[:K]  # [K]
        cnt = jax.ops.segment_sum(w_tok, seg, num_segments=K + 1)[:K]  # [K]
        per_slot = tot / jnp.maximum(cnt, 1.0)  # mean over each slot's own targets, as the padded step
        return jnp.sum(per_slot), per_slot

    def compute(b):
        (_, loss), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.lora.weights, b)
        return loss, grads, jax.vmap(optax.global_norm)(grads)  # [K], [K, ...], [K]

    stepping = batch["stepping"] & ~state.failed & (state.step < hp["total_steps"])
    loss, grads, gnorm = compute(batch)
    bad = stepping & ~(jnp.isfinite(loss) & jnp.isfinite(gnorm))

    def without_culprits(_):
        # A slot whose own loss is non-finite diverged (the forward keeps others finite: see attention.attend and
        # grouped._tiled). The backward cannot keep it out of its neighbours' gradients (a masked score's zero
        # cotangent times its nan query is nan), so the step is recomputed with its tokens made padding.
        culprit = stepping & ~jnp.isfinite(loss)
        culprit = jnp.where(jnp.any(culprit), culprit, bad)  # a backward-only overflow: drop every such slot
        l2, g2, n2 = compute(_drop_slots(batch, culprit))
        return jnp.where(culprit, jnp.nan, l2), g2, n2, culprit

    loss, grads, gnorm, dropped = jax.lax.cond(
        jnp.any(bad), without_culprits, lambda _: (loss, grads, gnorm, jnp.zeros_like(bad)), None)

    def update(g, o, w, h):
        updates, new_o = il.optimizer(h).update(g, o, w)
        return optax.apply_updates(w, updates), new_o

    new_w, new_o = jax.vmap(update)(grads, state.opt_state, state.lora.weights, hp)
    active = stepping
    finite = jnp.isfinite(loss) & jnp.isfinite(gnorm) & ~dropped
    moved = jax.vmap(lambda n, o: optax.global_norm(jax.tree.map(jnp.subtract, n, o)))(new_w, state.lora.weights)
    blown = finite & ~(moved <= DIVERGED * (jax.vmap(optax.global_norm)(state.lora.weights) + 1.0))
    finite = finite & ~blown
    apply = active & finite
    keep = lambda new, old: jax.tree.map(
        lambda n, o: jnp.where(apply.reshape((-1,) + (1,) * (o.ndim - 1)), n, o), new, old)
    state = SlotState(Lora(lora_cfg, keep(new_w, state.lora.weights)), keep(new_o, state.opt_state),
                      state.step + apply.astype(jnp.int32), state.failed | (active & ~finite),
                      state.diverged | (active & blown))
    return state, jnp.where(active, loss, jnp.nan), jnp.where(active, gnorm, jnp.nan)


def _drop_slots(batch, drop):
    """The step's stream with the tokens of slots `drop` [K] turned into padding (no key, no loss, no adapter)."""
    slot = batch["token_slot"]  # [R*T]
    R, T = batch["tokens"].shape
    gone = ((slot >= 0) & drop[jnp.maximum(slot, 0)]).reshape(R, T)
    zero = lambda x: jnp.where(gone, 0, x).astype(x.dtype)
    gid = batch["group_ids"]
    return {**batch, "tokens": zero(batch["tokens"]), "segment_ids": zero(batch["segment_ids"]),
            "kv_segment_ids": zero(batch["kv_segment_ids"]), "weights": zero(batch["weights"]),
            "positions": zero(batch["positions"]), "token_slot": jnp.where(gone.reshape(-1), -1, slot),
            "group_ids": jnp.where((gid >= 0) & drop[jnp.maximum(gid, 0)], -1, gid),
            "stepping": batch["stepping"] & ~drop}


def _shard_call(model: Model, state: SlotState, data, hp, reset, seeds, num_steps):
    """One adapter shard's call: admit, then `num_steps` (traced) global steps over its host-packed data
    [1, G, ...] (the shard's own R x T streams); -> (state, loss [G, K], grad norm [G, K]) over its K slots."""
    TRACE_COUNTS["run_call"] += 1
    state = _admit(model.config, state, reset, seeds)
    data = {k: v[0] for k, v in data.items()}  # [G, ...]
    G = data["tokens"].shape[0]
    K = state.step.shape[0]

    def body(g, carry):
        st, losses, gnorms = carry
        batch = {k: v[g] for k, v in data.items()}
        st, loss, gnorm = _global_step(model, st, batch, hp)
        return st, losses.at[g].set(loss), gnorms.at[g].set(gnorm)

    nan = jnp.full((G, K), jnp.nan, jnp.float32)
    return jax.lax.fori_loop(0, num_steps, body, (state, nan, nan))


@functools.partial(jax.jit, donate_argnames=("state",), static_argnames=("mesh",))
def _run_call(model: Model, state: SlotState, data, hp, reset, seeds, num_steps, mesh=None):
    """One engine call over all adapter shards: data [A, G, ...] (A = the mesh's "adapter" size, 1 without a mesh),
    state / hp / reset / seeds over the A x K slots (shard-major) -> (state, loss [G, A*K], grad norm [G, A*K]).

    With a mesh, `shard_map` over "adapter" runs `_shard_call` on each shard's own slots and streams (no
    communication between shards: the adapters are independent); the "model" axis stays automatic, so the frozen
    base keeps the layout the sharding rules gave it (tensor-parallel heads / MLP / vocabulary). The body has no
    collectives over "adapter", so the varying-axis check is off (`check_vma=False`): under it, jax 0.10.2's
    `jnp.searchsorted` (in the tiled LoRA backend) fails an internal assertion on the manual axis."""
    if mesh is None:
        return _shard_call(model, state, data, hp, reset, seeds, num_steps)
    shard = P("adapter")
    return jax.shard_map(_shard_call, mesh=mesh, in_specs=(P(), shard, shard, shard, shard, shard, P()),
                         out_specs=(shard, P(None, "adapter"), P(None, "adapter")),
                         axis_names=frozenset({"adapter"}), check_vma=False)(model, state, data, hp, reset, seeds,
                                                                             num_steps)


@functools.partial(jax.jit, static_argnames=("sharding",))
def _take(weights, k, sharding=None):
    """Adapter k of the slot bank, as a single adapter's weights (replicated over the mesh when `sharding` is
    given, so every process holds the whole adapter)."""
    TRACE_COUNTS["take"] += 1
    out = jax.tree.map(lambda w: w[k], weights)
    return out if sharding is None else jax.lax.with_sharding_constraint(out, sharding)


# ------------------------------------------------------------------------------------------------ host planning
@dataclasses.dataclass
class _Call:
    """One compiled call's work over A adapter shards of K slots: admissions, then up to `steps_per_call` packed
    global steps (every shard runs the same number; a shard with less work runs empty ones)."""

    R: int
    T: int
    steps: list[dict[str, np.ndarray]]  # per global step: the arrays of `_layout`, each with a leading shard axis A
    C: int  # positions projected onto the vocabulary per step (0: all R x (T - 1))
    reset: np.ndarray  # [A*K] bool: slot takes a new job at the start of the call
    seeds: np.ndarray  # [A*K] int32 LoRA seeds of the new jobs
    hp: dict[str, np.ndarray]  # per-slot hyper-parameters [A*K]
    empty: list[int]  # jobs with no steps at all (finished at admission)

    @property
    def shard_real_tokens(self) -> list[int]:
        """Each shard's real tokens (keys: the sequences' own tokens, not their trailing pads) over the call."""
        A = self.steps[0]["tokens"].shape[0] if self.steps else 0
        return [int(sum((s["kv_segment_ids"][a] > 0).sum() for s in self.steps)) for a in range(A)]

    @property
    def real_tokens(self) -> int:
        return sum(self.shard_real_tokens)

    @property
    def shape(self) -> tuple[int, int, int]:
        """The compiled program's shape bucket: (rows, row length, projected positions or 0 for all)."""
        return self.R, self.T, self.C


def balance(tokens: Sequence[int], shards: int) -> list[int]:
    """The shard of each job: jobs by tokens, longest first, each to the shard with the fewest tokens so far (ties:
    the lower shard; equal jobs: the earlier one first). A pure function of the jobs, so every process of a
    multi-controller run computes the same assignment without communicating."""
    load, out = [0] * shards, [0] * len(tokens)
    for i in sorted(range(len(tokens)), key=lambda i: (-tokens[i], i)):
        s = min(range(shards), key=lambda s: (load[s], s))
        out[i], load[s] = s, load[s] + tokens[i]
    return out


class _Shard:
    """One adapter shard's host side: its jobs' queue, its K slots, their selection and packing."""

    HP = ("learning_rate", "schedule", "warmup_steps", "total_steps", "max_grad_norm", "weight_decay")

    def __init__(self, stream: "_Scheduler", jobs: Sequence[int]):
        self.stream, self.cfg = stream, stream.cfg
        K = stream.K
        self.slots: list[_Active | None] = [None] * K
        self.queue = collections.deque(jobs)
        self.hp = {n: np.zeros(K, np.float32 if n in ("learning_rate", "max_grad_norm", "weight_decay") else
                               np.int32) for n in self.HP}
        self.queued_tokens = sum(stream.job_tokens(i) for i in self.queue)

    def admit(self) -> tuple[np.ndarray, np.ndarray, list[int]]:
        st, K = self.stream, self.stream.K
        reset, seeds, empty = np.zeros(K, bool), np.zeros(K, np.int32), []
        for k in range(K):
            while self.slots[k] is None and self.queue:
                i = self.queue.popleft()
                self.queued_tokens -= st.job_tokens(i)
                if not st.batches[i]:
                    empty.append(i)
                    continue
                self.slots[k] = _Active(i, st.jobs[i], st.seqs[i], st.batches[i], st.admitted)
                st.admitted += 1
                reset[k], seeds[k] = True, st.jobs[i].init_seed
                sp = st.jobs[i].spec
                for n, v in zip(self.HP, (sp.learning_rate, il.SCHEDULES[sp.schedule], sp.warmup_steps,
                                          len(st.batches[i]), sp.max_grad_norm, sp.weight_decay)):
                    self.hp[n][k] = v
        return reset, seeds, empty

    def live(self) -> list[int]:
        return [k for k, a in enumerate(self.slots) if a is not None and not a.done]

    def longest_ahead(self) -> int:
        """The longest sequence in the live slots' next batches (what the next global step may pack)."""
        return max((len(a.seqs[i].tokens) for a in (self.slots[k] for k in self.live())
                    for i in a.batches[a.step]), default=1)

    def capacity(self) -> float:
        """The tokens a global step of this shard should hold: what (a) the live slots' next batches fill and (b)
        spreads the remaining work over at least the longest remaining job's steps (one step per job per global
        step: a larger capacity would leave the steps of the critical path half empty)."""
        st, live = self.stream, self.live()
        demand = sum(self.slots[k].batch_len(self.slots[k].step) for k in live)
        work = sum(self.slots[k].remaining_tokens() for k in live) + self.queued_tokens
        critical = max([len(self.slots[k].batches) - self.slots[k].step for k in live] +
                       [len(st.batches[i]) for i in self.queue] + [1])
        return min(demand, work / critical)

    def rows(self, T: int) -> int:
        """R for the next call's rows of T tokens: the largest power of two whose R x T the `capacity` fills (at
        most max_tokens_per_step), and at least enough rows for any one batch."""
        st, target = self.stream, self.capacity()
        r, most = 1, max(1, self.cfg.max_tokens_per_step // T, st.max_batch)
        while r * 2 <= most and r * 2 * T <= target:
            r *= 2
        return max(r, st.min_rows)

    def order(self) -> list[int]:
        live = self.live()
        if self.queue:  # jobs wait: oldest first, so jobs finish and slots refill
            return sorted(live, key=lambda k: (self.slots[k].admitted, k))
        # drain: the critical path first (most remaining steps), then most remaining tokens
        return sorted(live, key=lambda k: (-(len(self.slots[k].batches) - self.slots[k].step),
                                           -self.slots[k].remaining_tokens(), k))

    def pack(self, R: int, T: int, Gm: int) -> dict[str, np.ndarray] | None:
        """One global step of this shard's live slots in an R x T stream (None: no live slot)."""
        order = self.order()
        if not order:
            return None
        placed = _pack(self.slots, order, R, T)
        if not placed:  # cannot happen (T holds every next batch, R any one batch); guard against a silent hang
            raise AssertionError("no batch fits a global step")
        for k in sorted({p[1] for p in placed}):
            a = self.slots[k]
            a.real_tokens += sum(a.seqs[i].real for i in a.batches[a.step])
            a.step += 1
        return _layout(placed, R, T, self.stream.K, Gm)

    def after_call(self, failed: np.ndarray | None) -> list[tuple[int, _Active, bool]]:
        out = []
        for k, a in enumerate(self.slots):
            if a is not None and (a.done or (failed is not None and failed[k])):
                out.append((k, a, bool(failed is not None and failed[k])))
                self.slots[k] = None
        return out


class _Scheduler:
    """The host side of the engine: jobs balanced over the A adapter shards (`balance`), and per shard admission,
    slot selection and packing (no device work; `Engine.plan` runs it alone to count the work of a stream). Every
    shard's call has the same shape: R is the largest any shard asks for, the step count the most any shard has."""

    HP = _Shard.HP

    def __init__(self, cfg: EngineConfig, jobs: Sequence[Job], shards: int = 1):
        self.cfg, self.jobs, self.A = cfg, jobs, shards
        self.seqs = [_sequences(j.examples, cfg) for j in jobs]
        longest = max((len(s.tokens) for seqs in self.seqs for s in seqs), default=1)
        self.T = cfg.row_length or bucket(longest, cfg.length_buckets)
        if longest > self.T:
            raise ValueError(f"a sequence of {longest} tokens exceeds the row length {self.T}")
        self.batches = [il.batch_schedule(len(s), j.spec) for s, j in zip(self.seqs, jobs)]
        self.max_batch = max((len(x) for b in self.batches for x in b), default=1)
        self.min_rows = 1
        while self.min_rows < self.max_batch:  # any one batch must fit (first fit of <= max_batch sequences)
            self.min_rows *= 2
        self.shard_of = balance([self.job_tokens(i) for i in range(len(jobs))], shards)
        mine = [[i for i in range(len(jobs)) if self.shard_of[i] == a] for a in range(shards)]
        self.K = stream_slots(cfg, max(len(m) for m in mine))
        self.admitted = 0
        self.shards = [_Shard(self, m) for m in mine]

    def job_tokens(self, i: int) -> int:
        return sum(len(self.seqs[i][x].tokens) for b in self.batches[i] for x in b)

    @property
    def slots(self) -> list[_Active | None]:
        """Every slot, shard-major (slot a*K + k is slot k of shard a)."""
        return [a for sh in self.shards for a in sh.slots]

    def next_call(self) -> _Call | None:
        """Admit into free slots and plan the next call; None when every job is done."""
        admitted = [sh.admit() for sh in self.shards]
        reset, seeds = (np.concatenate([x[j] for x in admitted]) for j in (0, 1))
        empty = [i for x in admitted for i in x[2]]
        hp = {n: np.concatenate([sh.hp[n] for sh in self.shards]) for n in self.HP}
        busy = [sh for sh in self.shards if sh.live()]
        if not busy:
            return _Call(0, self.T, [], 0, reset, seeds, hp, empty) if empty else None
        # Rows as long as the stream's longest sequence. On a mesh, where one such row is already more than a step of
        # every shard should hold (few jobs per shard: the shards run in lockstep, so a row's idle tokens are paid A
        # times), rows as long as the next batches need (`_row_length`), each call ending when that length changes.
        # One device keeps the stream's length: a stream that small costs little, and other lengths cost compiles.
        fitted = (self.A > 1 and not self.cfg.row_length and max(sh.capacity() for sh in busy) < self.T)
        T = self._row_length(busy) if fitted else self.T
        R = max(sh.rows(T) for sh in busy)
        Gm = group_bound(self.K, self.max_batch, R, T)
        idle = _layout([], R, T, self.K, Gm)  # a step of a shard with nothing left to do
        packed = []  # per global step, per shard
        for _ in range(self.cfg.steps_per_call):
            busy = [sh for sh in self.shards if sh.live()]
            # The call ends when nothing is left, or when the next batches need rows of another length (longer; or
            # shorter, the sequences that needed this length being past): the next call has rows of that length.
            if not busy or (fitted and self._row_length(busy) != T):
                break
            packed.append([sh.pack(R, T, Gm) or idle for sh in self.shards])
        steps = [{key: np.stack([p[key] for p in step]) for key in idle if key != "target_index"}
                 for step in packed]
        # Loss only on some tokens (completion masks): project just those positions, in a bucketed count C.
        index = [[p["target_index"] for p in step] for step in packed]
        most = max(len(i) for step in index for i in step)
        C = bucket(most, minimum=16) if most else 16
        C = 0 if C >= R * (T - 1) // 2 else C  # under half the positions only: else the plain chunked loss
        for st, idx in zip(steps, index):
            st["targets"] = np.asarray([len(i) for i in idx], np.int32)
            if C:
                st["target_index"] = np.stack([np.pad(i, (0, C - len(i))) for i in idx]).astype(np.int32)
        return _Call(R, T, steps, C, reset, seeds, hp, empty)

    def _row_length(self, busy: list[_Shard]) -> int:
        """T of the next step: the bucket of the longest sequence in the live slots' next batches (at most the
        stream's T)."""
        return min(self.T, bucket(max(sh.longest_ahead() for sh in busy), self.cfg.length_buckets))

    def after_call(self, failed: np.ndarray | None = None) -> list[tuple[int, _Active, bool]]:
        """Free the slots whose job ended (all steps taken, or failed on the device): (slot, job, failed), slots
        numbered shard-major."""
        K = self.K
        return [(a * K + k, job, bad) for a, sh in enumerate(self.shards)
                for k, job, bad in sh.after_call(None if failed is None else failed[a * K:(a + 1) * K])]


def _pack(slots, order, R: int, T: int) -> list[tuple[int, int, int, _Seq]]:
    """First fit of each selected slot's whole batch (longest sequence first); a slot whose batch does not fit
    waits. Returns (row, slot, sequence number in the batch, sequence) placements."""
    free = [T] * R
    placed = []
    for k in order:
        a = slots[k]
        seqs = sorted(((j, a.seqs[i]) for j, i in enumerate(a.batches[a.step])), key=lambda x: -len(x[1].tokens))
        trial, ok = list(free), []
        for j, s in seqs:
            n = len(s.tokens)
            row = next((r for r in range(R) if trial[r] >= n), None)
            if row is None:
                break
            trial[row] -= n
            ok.append((row, k, j, s))
        if len(ok) == len(seqs):
            free = trial
            placed += ok
    return placed


def stream_slots(cfg: EngineConfig, jobs: int) -> int:
    """K, the slots a stream of `jobs` jobs holds: min(cfg.slots, jobs), at least one. A resident slot costs AdamW
    and LoRA work every step whether or not it trains (benchmarks/engine_step_cpu.py: 64 slots 5x the step time of 4
    on the same two-job stream), so the same config serves a 3-job stream and a 3,000-job one. Streams of different
    sizes under cfg.slots compile different programs (K is a shape)."""
    return max(1, min(cfg.slots, jobs))


def group_bound(slots: int, max_batch: int, rows: int, row_length: int) -> int:
    """Gm, the static number of ragged groups of a step of `rows` x `row_length` tokens: a group is a run of one
    slot's tokens (at most slots x max_batch sequences) or a row's padding (one per row), and holds at least one
    token; rounded up to a multiple of 8. Per call, not per stream: the tiled LoRA backend does work for every
    group (each gathers its adapter's weights), so a one-row call must not carry the groups of the widest one."""
    return -(-min(slots * max_batch + 2 * rows, rows * row_length) // 8) * 8


def _layout(placed, R: int, T: int, K: int, Gm: int) -> dict[str, np.ndarray]:
    """Placements -> the step's arrays: per row the sequences grouped by slot, then padding."""
    tok = np.zeros((R, T), np.int32)
    pos = np.zeros((R, T), np.int32)
    seg = np.zeros((R, T), np.int32)
    kv = np.zeros((R, T), np.int32)
    w = np.zeros((R, T), np.float32)
    slot = np.full((R, T), -1, np.int32)
    gid, gsz = [], []
    stepping = np.zeros(K, bool)
    by_row: dict[int, list] = collections.defaultdict(list)
    for p in placed:
        by_row[p[0]].append(p)
    for r in range(R):
        used = 0
        for i, (_, k, _, s) in enumerate(sorted(by_row[r], key=lambda p: (p[1], p[2]))):
            n = len(s.tokens)
            tok[r, used:used + n], w[r, used:used + n] = s.tokens, s.weights
            seg[r, used:used + n] = i + 1
            kv[r, used:used + n] = np.where(s.keys, i + 1, 0)
            pos[r, used:used + n] = np.arange(n)
            slot[r, used:used + n] = k
            if gid and gid[-1] == k:  # contiguous with the previous run of this slot (same row, or a full row)
                gsz[-1] += n
            else:
                gid.append(k)
                gsz.append(n)
            stepping[k] = True
            used += n
        if used < T:
            gid.append(-1)
            gsz.append(T - used)
    if len(gid) > Gm:
        raise AssertionError(f"{len(gid)} groups exceed the static bound {Gm}")
    gid += [-1] * (Gm - len(gid))
    gsz += [0] * (Gm - len(gsz))
    same = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
    target_index = np.flatnonzero((w[:, 1:] > 0) & same)  # into the R x (T - 1) predicting positions
    return {"tokens": tok, "positions": pos, "segment_ids": seg, "kv_segment_ids": kv, "weights": w,
            "token_slot": slot.reshape(-1), "group_ids": np.asarray(gid, np.int32),
            "group_sizes": np.asarray(gsz, np.int32), "stepping": stepping, "target_index": target_index}


# ------------------------------------------------------------------------------------------------ the engine
class Engine:
    """Streams fine-tuning jobs through K resident adapter slots per adapter shard (see the module docstring).

    mesh: None (one device), or a ("adapter", "model") mesh (`seal_jax.sharding.make_mesh`) with the model already
    placed on it (`distributed.shard_model`): jobs are balanced over the A = mesh.shape["adapter"] shards, each with
    its own K slots and its own packed streams; "model" splits the frozen base by the sharding rules."""

    def __init__(self, model: Model, lora_cfg: LoraConfig, cfg: EngineConfig = EngineConfig(),
                 mesh: Mesh | None = None):
        if lora_cfg.dropout:
            raise ValueError("the ragged engine does not apply LoRA dropout (its token stream mixes adapters); "
                             "use the padded inner loop (seal_jax.inner_loop.train) for adapters with dropout")
        remat = cfg.remat
        if remat == "auto":
            from seal_jax.planner import engine_remat
            remat = model.config.remat or engine_remat(model.config, cfg.max_tokens_per_step,
                                                       "bfloat16" if model.dtype == jnp.bfloat16 else "float32")
        if bool(remat) != model.config.remat:
            model = Model(model.config.replace(remat=bool(remat)), model.params)
        self.model, self.lora_cfg, self.cfg, self.mesh = model, lora_cfg, cfg, mesh
        self.shards = 1 if mesh is None else int(mesh.shape["adapter"])
        self.stats = _new_stats()

    def plan(self, jobs: Sequence[Job]) -> dict:
        """The work of a stream without training it: the same admission, selection and packing as `run` (no job
        fails), returning the accounting `run` would record (token slots, real tokens, global steps, calls, shapes)."""
        sched, stats = _Scheduler(self.cfg, jobs, self.shards), _new_stats()
        stats.update(slots=sched.K, shards=sched.A)
        stats["finish_order"] = []  # job indices in the order `run` hands them out (none failing)
        while (call := sched.next_call()) is not None:
            _account(stats, call)
            stats["finish_order"] += call.empty + [a.index for _, a, _ in sched.after_call()]
        return stats

    def compile(self, jobs: Sequence[Job]) -> set[tuple[int, int, int]]:
        """Compile the program of every call shape `run(jobs)` will use (each run once with zero steps), so that
        timing `run` measures no compilation. Returns the (R, T, C) shapes."""
        sched = _Scheduler(self.cfg, jobs, self.shards)
        shapes: dict[tuple[int, int, int], _Call] = {}
        while (call := sched.next_call()) is not None:
            if call.steps:
                shapes.setdefault(call.shape, call)
            sched.after_call()
        state = self._init_state(sched.A * sched.K)
        for call in shapes.values():
            state = self._call(state, call, 0)[0]
        jax.block_until_ready(state.step)
        return set(shapes)

    def _put(self, x, spec=P("adapter")):
        """A host array on the device (one device), or over the mesh by `spec` (each process its own shards)."""
        if self.mesh is None:
            return jnp.asarray(x)
        from seal_jax.distributed import put
        return put(x, NamedSharding(self.mesh, spec))

    def _call(self, state: SlotState, call: _Call, n: int):
        """Run `n` global steps of `call` (its steps stacked to [A, steps_per_call, ...], unused steps zero)."""
        G, have = self.cfg.steps_per_call, len(call.steps)
        data = {key: np.stack([s[key] for s in call.steps] + [np.zeros_like(call.steps[0][key])] * (G - have),
                              axis=1) for key in call.steps[0]}
        return _run_call(self.model, state, {k: self._put(v) for k, v in data.items()},
                         {k: self._put(v) for k, v in call.hp.items()}, self._put(call.reset),
                         self._put(call.seeds), jnp.int32(n), mesh=self.mesh)

    def run(self, jobs: Sequence[Job]) -> Iterator[Finished]:
        """Train every job; yields each `Finished` job (in finishing order) as soon as the call that ends it is done.
        Every job is checked (sequence lengths against the row length) before any work starts."""
        from seal_jax.distributed import gather
        sched = _Scheduler(self.cfg, jobs, self.shards)
        self.stats.update(slots=sched.K, shards=sched.A)
        state = self._init_state(sched.A * sched.K)
        K = sched.K
        while (call := sched.next_call()) is not None:
            for i in call.empty:
                yield self._empty(i, jobs[i])
            if not call.steps:
                continue
            n = len(call.steps)
            t0 = time.perf_counter()
            state, losses, gnorms = self._call(state, call, n)
            losses, gnorms, dev_step, failed, diverged = gather((losses, gnorms, state.step, state.failed,
                                                                 state.diverged))
            self.stats["train_seconds"] += time.perf_counter() - t0
            _account(self.stats, call)
            for k, a in enumerate(sched.slots):
                if a is not None:
                    took = np.stack([st["stepping"][k // K, k % K] for st in call.steps])
                    a.losses += [float(x) for x in losses[:n, k][took] if np.isfinite(x)]
                    a.grad_norms += [float(x) for x in gnorms[:n, k][took] if np.isfinite(x)]
                    if failed[k]:  # the batches packed after its failing step were dropped on the device
                        dropped = sum(a.seqs[i].real for s in range(int(dev_step[k]) + 1, a.step)
                                      for i in a.batches[s])
                        a.real_tokens -= dropped
                        self.stats["real_tokens"] -= dropped
                        self.stats["shard_real_tokens"][k // K] -= dropped
            for k, a, bad in sched.after_call(failed):
                yield self._finish(a, state, k, int(dev_step[k]), bad, bool(diverged[k]))

    def _init_state(self, K: int) -> SlotState:
        def make():
            lora = init_lora(self.model.config, self.lora_cfg, jax.random.PRNGKey(0), num_adapters=K)
            return SlotState(lora, jax.vmap(optim.init_state)(lora.weights), jnp.zeros((K,), jnp.int32),
                             jnp.zeros((K,), bool), jnp.zeros((K,), bool))

        if self.mesh is None:
            return make()
        by_slot = NamedSharding(self.mesh, P("adapter"))
        return jax.jit(make, out_shardings=jax.tree.map(lambda _: by_slot, jax.eval_shape(make)))()

    def _replicated(self) -> NamedSharding | None:
        return None if self.mesh is None else NamedSharding(self.mesh, P())

    def _finish(self, a: _Active, state: SlotState, k: int, steps: int, failed: bool,
                diverged: bool = False) -> Finished:
        lora = Lora(self.lora_cfg, _take(state.lora.weights, jnp.int32(k), sharding=self._replicated()))
        failure = None
        if diverged:
            failure = (f"diverged at optimiser step {steps} of {len(a.batches)}: the update's norm exceeded "
                       f"{DIVERGED:g} x (the weights' norm + 1); the adapter holds its weights before that step")
        elif failed:
            failure = f"non-finite weights, loss or gradient at optimiser step {steps} of {len(a.batches)}"
        return Finished(a.index, a.job, lora, steps, len(a.batches), a.losses, a.grad_norms, a.real_tokens,
                        failed, failure)

    def _empty(self, i: int, job: Job) -> Finished:
        weights = _fresh(self.model.config, self.lora_cfg, job.init_seed)
        if self.mesh is not None:
            weights = jax.device_put(weights, self._replicated())
        return Finished(i, job, Lora(self.lora_cfg, weights), 0, 0, [], [], 0)


def lower_call(model: Model, lora_cfg: LoraConfig, cfg: EngineConfig, rows: int, row_length: int,
               max_batch: int = 1, targets: int = 0, mesh: Mesh | None = None):
    """The compiled program of one engine call with `rows` x `row_length` packed streams per adapter shard, lowered
    and compiled from abstract arrays (a `Model` whose params are ShapeDtypeStructs works: nothing is allocated). Its
    `memory_analysis()` is XLA's own account of the call's memory (arguments, outputs, temporaries), per device.
    K = cfg.slots per shard: the call of a stream of at least cfg.slots jobs per shard, the most a stream holds.
    mesh: the call sharded over it (the model's params abstract, placed by the sharding rules)."""
    A = 1 if mesh is None else int(mesh.shape["adapter"])
    K, G, R, T = cfg.slots, cfg.steps_per_call, rows, row_length
    Gm = group_bound(K, max_batch, R, T)
    by = None if mesh is None else NamedSharding(mesh, P("adapter"))
    sds = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=by)  # noqa: E731
    i32, f32 = jnp.int32, jnp.float32
    data = {"tokens": sds((A, G, R, T), i32), "positions": sds((A, G, R, T), i32),
            "segment_ids": sds((A, G, R, T), i32), "kv_segment_ids": sds((A, G, R, T), i32),
            "weights": sds((A, G, R, T), f32), "token_slot": sds((A, G, R * T), i32),
            "group_ids": sds((A, G, Gm), i32), "group_sizes": sds((A, G, Gm), i32),
            "stepping": sds((A, G, K), jnp.bool_), "targets": sds((A, G), i32)}
    if targets:
        data["target_index"] = sds((A, G, targets), i32)
    hp = {n: sds((A * K,), f32 if n in ("learning_rate", "max_grad_norm", "weight_decay") else i32)
          for n in _Scheduler.HP}
    engine = Engine(model, lora_cfg, cfg, mesh)
    state = jax.eval_shape(lambda: engine._init_state(A * K))
    if mesh is not None:
        from seal_jax.sharding import param_shardings
        state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=by), state)
        shardings = param_shardings(model.config, mesh, model.params)
        model = Model(engine.model.config, jax.tree.map(
            lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), engine.model.params, shardings))
    else:
        model = engine.model
    return _run_call.lower(model, state, data, hp, sds((A * K,), jnp.bool_), sds((A * K,), i32),
                           jax.ShapeDtypeStruct((), i32), mesh=mesh).compile()


def format_shapes(shapes) -> dict[str, int]:
    """{(R, T, C): calls} -> {"RxT" or "RxT/C": calls} (C: positions projected onto the vocabulary, when not all)."""
    return {f"{r}x{t}" + (f"/{c}" if c else ""): n for (r, t, c), n in sorted(shapes.items())}


def _new_stats() -> dict:
    return {"token_slots": 0, "real_tokens": 0, "global_steps": 0, "calls": 0, "train_seconds": 0.0,
            "shapes": collections.Counter(), "shard_real_tokens": [], "shard_busy_slots": []}


def _account(stats: dict, call: _Call) -> None:
    """Token slots count every shard's R x T positions of every step (a shard with nothing to do computes them
    all the same); per shard, its real tokens and the token slots of the steps in which it had work."""
    if not call.steps:
        return
    A = call.steps[0]["tokens"].shape[0]
    if not stats["shard_real_tokens"]:
        stats["shard_real_tokens"], stats["shard_busy_slots"] = [0] * A, [0] * A
    stats["calls"] += 1
    stats["global_steps"] += len(call.steps)
    stats["token_slots"] += len(call.steps) * A * call.R * call.T
    own = call.shard_real_tokens
    stats["real_tokens"] += sum(own)
    for a, n in enumerate(own):
        stats["shard_real_tokens"][a] += n
        stats["shard_busy_slots"][a] += sum(bool(s["stepping"][a].any()) for s in call.steps) * call.R * call.T
    stats["shapes"][call.shape] += 1

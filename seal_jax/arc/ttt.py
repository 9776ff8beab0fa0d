"""ARC test-time training (spec sections 1.3-1.5): the TTT data a self-edit configuration asks for, the LoRA
fine-tunes of every candidate configuration of many tasks in one engine stream, and each task's evaluation.

Data (`augmented_tasks`, `build_ttt_data`), for a task with N demonstrations and the augmenters a configuration
enables (`SelfEditConfig.augmenter_list`):
  * leave-n re-packaging of the demonstrations only (the test pairs are never used): n=1 makes N pseudo-tasks (demo i
    is the pseudo-test, the other N-1 the demonstrations, original order); n=2 makes N(N-1) (demo i is the
    pseudo-test, demos i and j are removed; zero demonstrations when N=2, kept as in the original);
  * per n, with a generator seeded afresh (the original's ``RandomState(0)`` per n): every augmenter applied to every
    base pseudo-task (augmenter-major order), tasks with a grid beyond 30x30 dropped, de-duplicated; then
    `permute_n` permuted copies of each (colour permutation with 0 fixed when any augmenter is on, then a random
    demonstration order), de-duplicated together with the unpermuted tasks;
  * every pseudo-task formatted with the original's TTT chat layout (`grids.ttt_messages` rendered by the tokenizer's
    chat template), sequences of ``max_tokens`` or more dropped, and when more than ``max_sequences`` (250) remain,
    a seeded shuffle keeps the first 250.
De-duplication keeps the first occurrence in a list and never iterates a set, so the data (and which 250 sequences
survive the cap) is a function of the task, the augmenters and the seed only: identical under any PYTHONHASHSEED,
unlike the original (W3). Without size-filtered or coinciding tasks there are 2 (A+1) N^2 pseudo-tasks for A
augmenters (2 (A+1) N with n=1 only) before the token filter and the cap.

Training (`train_tasks`): every distinct candidate configuration of every task of a stage is one job of ONE ragged
engine stream (`seal_jax.engine`: `TTTOptions.slots` adapters resident, each optimiser step one packed token stream
of at most `TTTOptions.tokens_per_step` tokens, rows of `TTTOptions.length_buckets`), so the adapters of several tasks
train side by side and a task is handed out as soon as its last adapter is trained. Each adapter equals training it
alone (the same batches, `inner_loop.batch_schedule`, and the same optimiser), whatever shares the stream. Per
adapter, as the original's HF Trainer: the preset LoRA (r 128, alpha 16, q/v/gate/up/down, the same initial A for
every adapter: every job's init seed is `TTTOptions.seed`, B = 0), AdamW (0.9, 0.999, 1e-8, no weight decay), clip 1.0,
11 linear warm-up steps then cosine decay to 0, batch 2, epochs from the configuration after the original's step
budget (``epochs * n // 2 > 375`` -> 0 epochs: a zero-step adapter, i.e. the base model, still evaluated as the
original does). Loss strategies map to per-token loss masks (``loss_mode="completion"``): ``train_using_all_tokens`` =
every token of the sequence, ``train_using_output_tokens`` = the assistant answer (grid, ``#``, end-of-turn, and the
trailing generation header when `TTTOptions.trailing_header`). Unlike the original, right padding is never in the loss
(W5: the engine packs sequences, there is no padding to train on) and training has one BOS unless
`TTTOptions.double_bos`. Identical configurations of a task share one adapter (the data and the shuffling seed are
functions of the task and the canonical configuration), and the TTT data is built once per (task, augmenters). A
configuration that yields no sequence, or whose loss or gradient goes non-finite, is a failed candidate with a
recorded reason (reward 0).

Evaluation (`evaluate_tasks`): the training stream, and for each task as it is handed out its augmented inference
with its usable adapters (stacked into one adapter batch in slot order), voting and scoring (`seal_jax.arc.inference`);
records per task in finishing order. `train_candidates` and `evaluate_configs` are the same on one task.
Timings in a stream: ``train_seconds`` is the task's TTT data building plus the stream's training time since the
previous task was handed out (tasks share steps, so training time is attributed in finishing order and sums to the
stream's), ``inference_seconds`` the task's own queries, generation and voting.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import time
from typing import Any, Callable, Iterator, Sequence

import jax

from seal_jax import engine as eng, seal
from seal_jax import inner_loop as il
from seal_jax.arc.augment import Augmenter, fits, make_rng, permute_colors, permute_examples
from seal_jax.arc.data import ArcTask
from seal_jax.arc.grids import TTT_INSTRUCTION, ttt_messages
from seal_jax.arc.self_edit import LOSS_STRATEGIES, SelfEditConfig
from seal_jax.lora import Lora, LoraConfig, init_lora, stack_adapters
from seal_jax.models.model import Model

__all__ = ["ARC_TTT_LORA", "LOSS_MASKS", "CandidateOutcome", "TTTData", "TTTOptions", "TrainedCandidates",
           "TrainedTask", "augmented_tasks", "build_ttt_data", "candidate_seed", "chunk_unique", "engine_config",
           "evaluate_configs", "evaluate_tasks", "leave_n_tasks", "task_key", "train_candidates", "train_tasks",
           "ttt_text"]

# The original's TTT adapter (self-edit.py:395-402): rank 128, alpha 16 (scale 0.125), no dropout.
ARC_TTT_LORA = LoraConfig(rank=128, alpha=16.0, targets=("q", "v", "gate", "up", "down"))

# Self-edit loss strategy -> which tokens carry loss.
LOSS_MASKS = {"train_using_all_tokens": "all", "train_using_output_tokens": "output"}


@dataclasses.dataclass(frozen=True)
class TTTOptions:
    """Everything about TTT that a self-edit does not choose. Defaults are the original's."""

    lora: LoraConfig = ARC_TTT_LORA
    leave_n: tuple[int, ...] = (1, 2)
    permute_n: int = 1  # permuted copies per pseudo-task
    max_sequences: int = 250  # the cap (Nmax)
    max_tokens: int = 8192  # sequences with this many tokens or more are dropped
    data_seed: int = 0  # the data generator (fresh per leave-n) and the cap's shuffle
    batch_size: int = 2
    max_steps: int = 375  # the step budget: epochs * n // batch_size > max_steps -> 0 epochs
    warmup_steps: int = 11
    schedule: str = "cosine"
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    trailing_header: bool = False  # original: the training text ends with a second assistant header (trained on)
    double_bos: bool = False  # original: the tokenizer adds a BOS before the template's
    pad_loss: bool = False  # original: each sequence eos-padded to its data set's longest, the pads in the loss
    instruction: str = TTT_INSTRUCTION  # the system message's opening paragraph (the original's from --prompts)
    length_buckets: tuple[int, ...] | None = None  # training row lengths (None: powers of two)
    seed: int = 0  # LoRA initialisation (shared by all adapters) and the per-configuration shuffling seeds
    slots: int = 16  # engine: the most adapters trained at once (across tasks; min(slots, jobs)); not a result setting
    tokens_per_step: int = 32768  # engine: the largest packed token stream (R x T) of one optimiser step

    def __post_init__(self):
        object.__setattr__(self, "leave_n", tuple(int(n) for n in self.leave_n))
        if not self.leave_n or min(self.leave_n) < 1:
            raise ValueError(f"leave_n must be positive integers, got {self.leave_n}")
        if (self.permute_n < 0 or self.max_sequences < 1 or self.max_tokens < 2 or self.batch_size < 1
                or self.slots < 1 or self.tokens_per_step < 1):
            raise ValueError(f"invalid TTTOptions {self}")
        if self.length_buckets:
            object.__setattr__(self, "length_buckets", tuple(sorted(int(b) for b in self.length_buckets)))
            if self.length_buckets[-1] < self.max_tokens - 1:
                raise ValueError(f"the largest length bucket {self.length_buckets[-1]} cannot hold a sequence of "
                                 f"max_tokens - 1 = {self.max_tokens - 1} tokens")


# ------------------------------------------------------------------------------------------------------- the data

def task_key(task: ArcTask) -> tuple:
    """Content of a task (demonstrations and tests), ignoring its id: the de-duplication key."""
    return (tuple((e.input, e.output) for e in task.train), tuple((e.input, e.output) for e in task.test))


def _dedup(tasks: Sequence[ArcTask]) -> list[ArcTask]:
    """First occurrence of each distinct task, in list order (a dict keyed by content; never a set's order)."""
    seen: dict[tuple, ArcTask] = {}
    for t in tasks:
        seen.setdefault(task_key(t), t)
    return list(seen.values())


def leave_n_tasks(task: ArcTask, n: int) -> list[ArcTask]:
    """Pseudo-tasks from the demonstrations: for each demo i (the pseudo-test) and each choice of n-1 other demos to
    remove (ascending), the remaining demonstrations in their original order. n=1: N tasks; n=2: N(N-1)."""
    N = len(task.train)
    out = []
    for i in range(N):
        others = [j for j in range(N) if j != i]
        for removed in itertools.combinations(others, n - 1):
            drop = {i, *removed}
            out.append(dataclasses.replace(task, train=tuple(d for j, d in enumerate(task.train) if j not in drop),
                                           test=(task.train[i],)))
    return out


def augmented_tasks(task: ArcTask, augmenters: Sequence[Augmenter], leave_n: Sequence[int] = (1, 2),
                    permute_n: int = 1, seed: int = 0) -> list[ArcTask]:
    """The pseudo-tasks of the TTT set before tokenisation and the cap (see the module docstring): 2 (A+1) N^2 of
    them for leave_n (1, 2) and permute_n 1 when no augmented grid exceeds 30x30 and no two tasks coincide."""
    out: list[ArcTask] = []
    for n in leave_n:
        rng = make_rng(seed)  # fresh per n, as the original
        base = leave_n_tasks(task, n)
        augmented = []
        for aug in augmenters:
            for t in base:
                a = aug.apply_to_task(t, rng)
                if fits(a):
                    augmented.append(a)
        pool = _dedup(base + augmented)
        permuted = []
        for t in pool:
            for _ in range(permute_n):
                p = permute_colors(t, rng)[0] if augmenters else t
                permuted.append(permute_examples(p, rng))
        out += _dedup(pool + permuted)
    return out


def ttt_text(tokenizer, pseudo: ArcTask, trailing_header: bool = False,
             instruction: str = TTT_INSTRUCTION) -> tuple[str, str]:
    """(prompt, answer) texts of one TTT sequence: the chat up to and including the assistant header, then the
    answer (grid, ``#``, end-of-turn, and with `trailing_header` the template's extra generation header)."""
    test = pseudo.test[0]
    messages = ttt_messages(pseudo.train, test.input, test.output, instruction)
    prompt = tokenizer.chat_prompt_text(messages[:2], add_generation_prompt=True)
    full = tokenizer.chat_prompt_text(messages, add_generation_prompt=trailing_header)
    if not full.startswith(prompt):
        raise ValueError("the chat template renders the prompt differently with and without the answer; "
                         "the answer's loss mask cannot be located")
    return prompt, full[len(prompt):]


@dataclasses.dataclass(frozen=True)
class TTTData:
    """Tokenised TTT sequences of one task and one augmenter list, after the token filter and the cap."""

    augmenters: tuple[str, ...]
    prompts: tuple[tuple[int, ...], ...]  # chat up to the assistant header
    answers: tuple[tuple[int, ...], ...]  # the assistant turn
    distinct: int  # pseudo-tasks after the size filter and de-duplication (before the token filter and the cap)
    too_long: int  # dropped by the token filter

    def __len__(self) -> int:
        return len(self.prompts)

    def examples(self, strategy: str, pad_loss: bool = False) -> list[il.Example]:
        """The sequences as inner-loop Examples with the loss mask of a self-edit strategy. pad_loss: the original's
        padding="longest" (spec 1.3): each sequence followed by pads up to the set's longest, trained on."""
        if strategy not in LOSS_STRATEGIES:
            raise ValueError(f"unknown loss strategy {strategy!r}; expected one of {', '.join(LOSS_STRATEGIES)}")
        if LOSS_MASKS[strategy] == "all":
            out = [il.Example(p + a, (1,) * (len(p) + len(a))) for p, a in zip(self.prompts, self.answers)]
        else:
            out = [il.Example.from_prompt_completion(p, a) for p, a in zip(self.prompts, self.answers)]
        if pad_loss and out:
            longest = max(len(e.tokens) for e in out)
            out = [dataclasses.replace(e, pads=longest - len(e.tokens)) for e in out]
        return out

    def lengths(self) -> list[int]:
        return [len(p) + len(a) for p, a in zip(self.prompts, self.answers)]


def build_ttt_data(task: ArcTask, augmenters: Sequence[Augmenter], tokenizer, opts: TTTOptions = TTTOptions()
                   ) -> TTTData:
    """The TTT set of one configuration's augmenters: pseudo-tasks -> chat texts -> tokens -> filter -> cap."""
    pseudo = augmented_tasks(task, augmenters, opts.leave_n, opts.permute_n, opts.data_seed)
    texts = [ttt_text(tokenizer, t, opts.trailing_header, opts.instruction) for t in pseudo]
    prompts = tokenizer.batch_encode([p for p, _ in texts], add_bos=opts.double_bos)
    answers = tokenizer.batch_encode([a for _, a in texts], add_bos=False)
    keep = [i for i in range(len(pseudo)) if len(prompts[i]) + len(answers[i]) < opts.max_tokens]
    too_long = len(pseudo) - len(keep)
    if len(keep) > opts.max_sequences:
        order = make_rng(opts.data_seed).permutation(len(keep))
        keep = [keep[int(i)] for i in order[:opts.max_sequences]]
    return TTTData(augmenters=tuple(a.name for a in augmenters), prompts=tuple(tuple(prompts[i]) for i in keep),
                   answers=tuple(tuple(answers[i]) for i in keep), distinct=len(pseudo),
                   too_long=too_long)


# ---------------------------------------------------------------------------------------------------- training

def candidate_seed(base_seed: int, task_id: str, config: SelfEditConfig) -> int:
    """The shuffling seed of one (task, configuration): independent of which other candidates share the batch."""
    h = hashlib.sha256(f"{base_seed}:{task_id}:{config.to_json()}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def chunk_unique(configs: Sequence[SelfEditConfig], k: int) -> list[list[int]]:
    """Indices of `configs` in chunks holding at most `k` distinct configurations each (duplicates stay with the
    first occurrence's chunk), so every chunk is one batch of at most k adapters."""
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    chunk_of: dict[str, int] = {}
    chunks: list[list[int]] = []
    sizes: list[int] = []
    for i, c in enumerate(configs):
        key = c.to_json()
        if key not in chunk_of:
            if not chunks or sizes[-1] == k:
                chunks.append([])
                sizes.append(0)
            chunk_of[key] = len(chunks) - 1
            sizes[-1] += 1
        chunks[chunk_of[key]].append(i)
    return chunks


@dataclasses.dataclass
class CandidateOutcome:
    """What training did for one candidate configuration (JSON-ready via `to_dict`)."""

    config: SelfEditConfig
    slot: int  # adapter index in the batch
    seed: int
    n_augmenters: int
    distinct: int
    too_long: int
    n_sequences: int
    epochs: int  # asked for
    epochs_budgeted: int  # after the step budget
    total_steps: int
    steps: int = 0  # optimiser steps taken
    train_tokens: int = 0
    first_loss: float | None = None
    final_loss: float | None = None
    failed: bool = False
    failure: str | None = None

    @property
    def budget_exceeded(self) -> bool:
        return self.epochs_budgeted != self.epochs

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "config"}
        d["config"] = self.config.to_dict()
        d["budget_exceeded"] = self.budget_exceeded
        return d


@dataclasses.dataclass
class TrainedTask:
    """One task's trained candidates (`train_tasks`). Slots are the task's distinct configurations in order of first
    appearance; duplicates share their first occurrence's slot."""

    index: int  # position of the task in the work
    task: ArcTask
    outcomes: list[CandidateOutcome]  # per configuration, in the order given
    adapters: list[Lora | None]  # per slot: the trained single adapter (None: no TTT data, nothing trained)
    usable: list[bool]  # per slot: an adapter that trained without failure (the ones inference asks)
    seconds: float  # training seconds, see `train_tasks`

    def bank(self, width: int | None = None, filler: Lora | None = None) -> Lora:
        """The usable adapters stacked into a batch of `width` (default: the slots): adapter s of the batch is slot s;
        the other slots (no data, failed) and the padding beyond the slots hold `filler` (default: the first usable
        adapter)."""
        width = len(self.adapters) if width is None else width
        if width < len(self.adapters):
            raise ValueError(f"{len(self.adapters)} distinct configurations do not fit in {width} adapters")
        slots = [a if ok else None for a, ok in zip(self.adapters, self.usable)]
        if filler is None:
            filler = next((a for a in slots if a is not None), None)
        if filler is None:
            raise ValueError("no usable adapter to stack: give a filler")
        return stack_adapters([filler if a is None else a for a in slots] + [filler] * (width - len(slots)))


@dataclasses.dataclass
class TrainedCandidates:
    """One task's candidates as a batch of K adapters (`train_candidates`): the outcome of every configuration given
    (same order) and which slots hold a usable adapter (not padding, not failed)."""

    lora: Lora
    outcomes: list[CandidateOutcome]
    usable: list[bool]
    seconds: float


@dataclasses.dataclass
class _Pending:
    """A task of the stream while its jobs train."""

    index: int
    task: ArcTask
    configs: list[SelfEditConfig]
    slot_of: list[int]  # per configuration
    outcomes: list[CandidateOutcome]  # per slot
    adapters: list[Lora | None]  # per slot
    waiting: int  # the jobs the task puts in the stream (0: nothing to train)
    data_seconds: float

    def done(self, seconds: float) -> TrainedTask:
        outcomes = [dataclasses.replace(self.outcomes[s], config=c) for c, s in zip(self.configs, self.slot_of)]
        return TrainedTask(self.index, self.task, outcomes, self.adapters, [not o.failed for o in self.outcomes],
                           seconds)


def _distinct(configs: Sequence[SelfEditConfig]) -> tuple[list[SelfEditConfig], list[int]]:
    """(one configuration per slot in order of first appearance, the slot of every configuration)."""
    slots: dict[str, int] = {}
    for c in configs:
        slots.setdefault(c.to_json(), len(slots))
    firsts = [None] * len(slots)
    for c in configs:
        if firsts[slots[c.to_json()]] is None:
            firsts[slots[c.to_json()]] = c
    return firsts, [slots[c.to_json()] for c in configs]  # type: ignore[return-value]


def _prepare(index: int, task: ArcTask, configs: Sequence[SelfEditConfig], opts: TTTOptions,
             data: Callable[[Sequence[Augmenter]], TTTData]) -> tuple[_Pending, list[eng.Job]]:
    """A task's slots (outcomes with the data counts and the step budget) and the engine jobs of the slots with data
    (key (task index, slot); every job starts from the same initial A, `opts.seed`)."""
    t0 = time.perf_counter()
    firsts, slot_of = _distinct(configs)
    outcomes, jobs = [], []
    for slot, c in enumerate(firsts):
        augs = c.augmenter_list()
        d = data(augs)
        n = len(d)
        epochs = c.budgeted_epochs(n, batch_size=opts.batch_size, max_steps=opts.max_steps)
        seed = candidate_seed(opts.seed, task.task_id, c)
        out = CandidateOutcome(config=c, slot=slot, seed=seed, n_augmenters=len(augs), distinct=d.distinct,
                               too_long=d.too_long, n_sequences=n, epochs=c.num_train_epochs, epochs_budgeted=epochs,
                               total_steps=epochs * -(-n // opts.batch_size))
        outcomes.append(out)
        if n == 0:
            out.failed = True
            out.failure = (f"no TTT data: all {d.distinct} sequences have {opts.max_tokens} tokens or more"
                           if d.distinct else "no TTT data: the task yields no pseudo-tasks")
            continue
        spec = il.TrainSpec(learning_rate=c.learning_rate, schedule=opts.schedule, warmup_steps=opts.warmup_steps,
                            epochs=epochs, batch_size=opts.batch_size, max_grad_norm=opts.max_grad_norm,
                            weight_decay=opts.weight_decay, seed=seed)
        jobs.append(eng.Job(d.examples(c.strategy, opts.pad_loss), spec, init_seed=opts.seed, key=(index, slot)))
    pending = _Pending(index, task, list(configs), slot_of, outcomes, [None] * len(firsts), len(jobs),
                       time.perf_counter() - t0)
    return pending, jobs


def engine_config(opts: TTTOptions, tokenizer) -> eng.EngineConfig:
    """The engine of a TTT stream: at most opts.slots slots (a stream of n jobs holds min(opts.slots, n):
    `engine.stream_slots`), opts.tokens_per_step, per-token loss masks from the loss strategies ("completion"),
    sequences cut at opts.max_tokens, rows of opts.length_buckets."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return eng.EngineConfig(slots=opts.slots, max_tokens_per_step=opts.tokens_per_step,
                            loss_mode="completion", pad_id=pad_id, max_length=opts.max_tokens,
                            length_buckets=opts.length_buckets)


def train_tasks(model: Model, tokenizer, work: Sequence[tuple[ArcTask, Sequence[SelfEditConfig]]],
                opts: TTTOptions = TTTOptions(), data_cache: dict | None = None,
                stats: dict | None = None, mesh=None) -> Iterator[TrainedTask]:
    """Train every distinct candidate configuration of every task of `work` in ONE engine stream; yield each task's
    `TrainedTask` as soon as its last adapter is trained (tasks without a job to train first, then in finishing
    order). A task's adapters equal training each alone (`seal_jax.engine`), whatever tasks share the stream.

    data_cache: {(task_key(task), augmenter names): TTTData}, shared by the configurations and tasks of the stream
    (and by later calls given the same dict, which must use the same tokenizer and data options). stats: filled with the engine's accounting (token slots, real tokens,
    global steps, calls, shapes, train_seconds, plus jobs and slots) before every yield. mesh: the engine sharded
    over it (jobs balanced over its "adapter" axis, opts.slots per shard; the model placed on it).

    Seconds: the tasks share the engine's steps, so a task's `seconds` is the time the stream spent on training since
    the previous task was handed out (or since the stream began), plus the task's own TTT data building; the time the
    consumer holds a yielded task (its inference) is not counted. Summed over the tasks it is the stream's training
    (and data) wall time.
    """
    cache = data_cache if data_cache is not None else {}
    pending: list[_Pending] = []
    jobs: list[eng.Job] = []
    for i, (task, configs) in enumerate(work):
        def data(augs, task=task):
            key = (task_key(task), tuple(a.name for a in augs))
            if key not in cache:
                cache[key] = build_ttt_data(task, augs, tokenizer, opts)
            return cache[key]

        p, task_jobs = _prepare(i, task, configs, opts, data)
        pending.append(p)
        jobs += task_jobs
    cfg = engine_config(opts, tokenizer)
    if stats is not None:
        stats.update(jobs=len(jobs), slots=0)  # the engine's stats give the slots (per shard) once it runs
    for p in pending:
        if p.waiting == 0:  # nothing to train: every slot failed for want of data (or the task has no configuration)
            yield p.done(p.data_seconds)
    if not jobs:
        return
    engine = eng.Engine(model, opts.lora, cfg, mesh=mesh)
    mark = [time.perf_counter()]

    def trained(batch: list[list[eng.Finished]]) -> list[TrainedTask]:  # one task's finished jobs per group
        out = []
        for group in batch:
            p = pending[group[0].job.key[0]]
            for done in group:
                o = p.outcomes[done.job.key[1]]
                o.steps, o.train_tokens = done.steps, done.real_tokens
                o.first_loss = done.losses[0] if done.losses else None
                o.final_loss = done.losses[-1] if done.losses else None
                if done.failed:
                    o.failed, o.failure = True, done.failure
                p.adapters[done.job.key[1]] = done.lora
            out.append(p.done(p.data_seconds + time.perf_counter() - mark[0]))
            p.adapters = []  # the stream keeps no reference to a handed-out task's adapters
        return out

    for batch in seal.evaluate(engine, jobs, trained, group=lambda job: job.key[0]):
        if stats is not None:
            stats.update({k: (collections.Counter(v) if k == "shapes" else v) for k, v in engine.stats.items()})
        for task in batch:
            yield task
            mark[0] = time.perf_counter()
    if stats is not None:
        stats.update({k: (collections.Counter(v) if k == "shapes" else v) for k, v in engine.stats.items()})


def train_candidates(model: Model, tokenizer, task: ArcTask, configs: Sequence[SelfEditConfig],
                     opts: TTTOptions = TTTOptions(), num_adapters: int | None = None,
                     data_cache: dict | None = None) -> TrainedCandidates:
    """Train every candidate configuration of one task (`train_tasks` on one task) and return the adapters as one
    batch of `num_adapters` (K; default: the distinct configurations).

    Distinct configurations take slots 0, 1, ... in order of first appearance (duplicates share a slot); the slots
    without a usable adapter (no data, failed) and the rest of the K slots hold the initial adapter (B = 0: the base
    model). The engine trains min(opts.slots, jobs) adapters at once.
    Raises ValueError when there are more than K distinct configurations. `data_cache` ({augmenter names: TTTData})
    lets several calls on the same task share data.
    """
    firsts, _ = _distinct(configs)
    K = num_adapters or max(len(firsts), 1)
    if len(firsts) > K:
        raise ValueError(f"{len(firsts)} distinct configurations do not fit in {K} adapters")
    cache = data_cache if data_cache is not None else {}
    shared = {(task_key(task), k): v for k, v in cache.items()}
    trained = next(train_tasks(model, tokenizer, [(task, configs)], opts, shared))
    cache.update({k[1]: v for k, v in shared.items()})
    fresh = init_lora(model.config, opts.lora, jax.random.PRNGKey(opts.seed))
    lora = trained.bank(K, fresh) if trained.adapters else stack_adapters([fresh] * K)
    usable = trained.usable + [False] * (K - len(trained.usable))
    return TrainedCandidates(lora=lora, outcomes=trained.outcomes, usable=usable, seconds=trained.seconds)


def evaluate_tasks(model: Model, tokenizer, work: Sequence[tuple[ArcTask, Sequence[SelfEditConfig]]],
                   opts: TTTOptions = TTTOptions(), inference_opts=None, width: int | None = None,
                   data_cache: dict | None = None, stats: dict | None = None, mesh=None
                   ) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """TTT + augmented inference + voting + scoring of every configuration of every task of `work`; yields
    (task id, records) per task as soon as it is done (finishing order, see `train_tasks`).

    Every distinct configuration of every task is one job of one engine stream (`train_tasks`; opts.slots adapters
    resident, opts.tokens_per_step tokens per global step). When a task's last adapter is trained, its usable adapters
    (stacked into a batch of `width`, slot order; default width: the most distinct configurations of any task in
    `work`, so every task's inference has the same adapter batch) answer the task's queries of every test input in
    multi-adapter generation calls; failed candidates are not asked. Returns one JSON-ready record per configuration
    (same order as given): the training outcome, per test input the number of queries and parsed answers and the two
    voted attempts, per-test correctness, ``correct`` (all test inputs solved; False for a failed candidate), and
    ``train_seconds`` (the task's share of the stream's training, `train_tasks`) and ``inference_seconds`` (queries,
    generation and parsing of this task) — both the same for every record of the task.
    """
    from seal_jax.arc import inference

    iopts = inference_opts or inference.InferenceOptions()
    most = max((len(_distinct(configs)[0]) for _, configs in work), default=1)
    width = width or max(most, 1)
    if most > width:
        raise ValueError(f"{most} distinct configurations of a task do not fit in {width} adapters")
    for trained in train_tasks(model, tokenizer, work, opts, data_cache, stats, mesh):
        task = trained.task
        t0 = time.perf_counter()
        queries = inference.build_task_queries(tokenizer, task, iopts)
        predictions: list = [None] * width
        if any(trained.usable):
            groups = [queries if s < len(trained.usable) and trained.usable[s] else None for s in range(width)]
            predictions = inference.predict(model, tokenizer, groups, iopts, lora=trained.bank(width), mesh=mesh)
        infer_s = time.perf_counter() - t0
        records = []
        for out in trained.outcomes:
            rec = out.to_dict()
            rec.update(inference.score_predictions(task, queries, predictions[out.slot], iopts.vote))
            rec["train_seconds"] = trained.seconds
            rec["inference_seconds"] = infer_s
            records.append(rec)
        trained.adapters = []
        yield task.task_id, records


def evaluate_configs(model: Model, tokenizer, task: ArcTask, configs: Sequence[SelfEditConfig],
                     opts: TTTOptions = TTTOptions(), inference_opts=None, num_adapters: int | None = None,
                     ) -> list[dict[str, Any]]:
    """`evaluate_tasks` on one task: every configuration's record (same order); `num_adapters` is the width of the
    inference adapter batch (default: the distinct configurations)."""
    return next(evaluate_tasks(model, tokenizer, [(task, configs)], opts, inference_opts, num_adapters))[1]

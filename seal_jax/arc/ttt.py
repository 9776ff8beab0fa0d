"""ARC test-time training (spec sections 1.3-1.4): the TTT data a self-edit configuration asks for, and one batched
LoRA fine-tune of every candidate configuration of a task.

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

Training (`train_candidates`): every candidate configuration of one task is one adapter of a single batched inner-loop
job (`inner_loop.build_plan` / `train_adapters`), padded to a fixed K with empty adapters so K never changes the
compiled program. Per adapter, as the original's HF Trainer: the preset LoRA (r 128, alpha 16, q/v/gate/up/down, the
same initial A for every adapter, B = 0), AdamW (0.9, 0.999, 1e-8, no weight decay), clip 1.0, 11 linear warm-up
steps then cosine decay to 0, batch 2, epochs from the configuration after the original's step budget
(``epochs * n // 2 > 375`` -> 0 epochs: a zero-step adapter, i.e. the base model, still evaluated as the original
does). Loss strategies map to per-token loss masks (``loss_mode="completion"``): ``train_using_all_tokens`` = every
token of the sequence, ``train_using_output_tokens`` = the assistant answer (grid, ``#``, end-of-turn, and the
trailing generation header when `TTTOptions.trailing_header`). Unlike the original, right padding is never in the loss
(W5) and training has one BOS unless `TTTOptions.double_bos`. Identical configurations share one adapter (the data
and the shuffling seed are functions of the task and the canonical configuration). A configuration that yields no
sequence, or whose loss or gradient goes non-finite, is a failed candidate with a recorded reason (reward 0).

`evaluate_configs` = train + augmented inference + voting + scoring (`seal_jax.arc.inference`) for one task.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import time
from typing import Any, Sequence

import jax
import numpy as np

from seal_jax import inner_loop as il
from seal_jax.arc.augment import Augmenter, fits, make_rng, permute_colors, permute_examples
from seal_jax.arc.data import ArcTask
from seal_jax.arc.grids import ttt_messages
from seal_jax.arc.self_edit import LOSS_STRATEGIES, SelfEditConfig
from seal_jax.lora import Lora, LoraConfig, init_lora
from seal_jax.models.model import Model

__all__ = ["ARC_TTT_LORA", "LOSS_MASKS", "CandidateOutcome", "TTTData", "TTTOptions", "TrainedCandidates",
           "augmented_tasks", "build_ttt_data", "candidate_seed", "chunk_unique", "evaluate_configs",
           "leave_n_tasks", "task_key", "ttt_text", "train_candidates"]

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
    length_buckets: tuple[int, ...] | None = None  # training row lengths (None: powers of two)
    seed: int = 0  # LoRA initialisation (shared by all adapters) and the per-configuration shuffling seeds

    def __post_init__(self):
        object.__setattr__(self, "leave_n", tuple(int(n) for n in self.leave_n))
        if not self.leave_n or min(self.leave_n) < 1:
            raise ValueError(f"leave_n must be positive integers, got {self.leave_n}")
        if self.permute_n < 0 or self.max_sequences < 1 or self.max_tokens < 2 or self.batch_size < 1:
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


def ttt_text(tokenizer, pseudo: ArcTask, trailing_header: bool = False) -> tuple[str, str]:
    """(prompt, answer) texts of one TTT sequence: the chat up to and including the assistant header, then the
    answer (grid, ``#``, end-of-turn, and with `trailing_header` the template's extra generation header)."""
    test = pseudo.test[0]
    messages = ttt_messages(pseudo.train, test.input, test.output)
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

    def examples(self, strategy: str) -> list[il.Example]:
        """The sequences as inner-loop Examples with the loss mask of a self-edit strategy."""
        if strategy not in LOSS_STRATEGIES:
            raise ValueError(f"unknown loss strategy {strategy!r}; expected one of {', '.join(LOSS_STRATEGIES)}")
        if LOSS_MASKS[strategy] == "all":
            return [il.Example(p + a, (1,) * (len(p) + len(a))) for p, a in zip(self.prompts, self.answers)]
        return [il.Example.from_prompt_completion(p, a) for p, a in zip(self.prompts, self.answers)]

    def lengths(self) -> list[int]:
        return [len(p) + len(a) for p, a in zip(self.prompts, self.answers)]


def build_ttt_data(task: ArcTask, augmenters: Sequence[Augmenter], tokenizer, opts: TTTOptions = TTTOptions()
                   ) -> TTTData:
    """The TTT set of one configuration's augmenters: pseudo-tasks -> chat texts -> tokens -> filter -> cap."""
    pseudo = augmented_tasks(task, augmenters, opts.leave_n, opts.permute_n, opts.data_seed)
    texts = [ttt_text(tokenizer, t, opts.trailing_header) for t in pseudo]
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
class TrainedCandidates:
    """One trained batch: K adapters (slots), the outcome of every configuration given (same order), and which
    slots hold a usable adapter (not padding, not failed)."""

    lora: Lora
    outcomes: list[CandidateOutcome]
    usable: list[bool]
    seconds: float


def train_candidates(model: Model, tokenizer, task: ArcTask, configs: Sequence[SelfEditConfig],
                     opts: TTTOptions = TTTOptions(), num_adapters: int | None = None,
                     data_cache: dict | None = None) -> TrainedCandidates:
    """Train every candidate configuration of `task` as one batch of `num_adapters` (K) adapters.

    Distinct configurations take slots 0, 1, ... in order of first appearance (duplicates share a slot); the rest of
    the K slots are empty (zero steps). Raises ValueError when there are more than K distinct configurations (use
    `chunk_unique`). `data_cache` ({augmenter names: TTTData}) lets several calls on the same task share data.
    """
    t0 = time.perf_counter()
    distinct: dict[str, int] = {}
    for c in configs:
        distinct.setdefault(c.to_json(), len(distinct))
    K = num_adapters or max(len(distinct), 1)
    if len(distinct) > K:
        raise ValueError(f"{len(distinct)} distinct configurations do not fit in {K} adapters")
    cache = data_cache if data_cache is not None else {}
    slot_configs = [None] * len(distinct)
    for c in configs:
        slot_configs[distinct[c.to_json()]] = c

    datasets: list[list[il.Example]] = []
    specs: list[il.TrainSpec] = []
    slot_outcomes: list[CandidateOutcome] = []
    for slot, c in enumerate(slot_configs):
        augs = c.augmenter_list()
        key = tuple(a.name for a in augs)
        if key not in cache:
            cache[key] = build_ttt_data(task, augs, tokenizer, opts)
        data: TTTData = cache[key]
        n = len(data)
        epochs = c.budgeted_epochs(n, batch_size=opts.batch_size, max_steps=opts.max_steps)
        seed = candidate_seed(opts.seed, task.task_id, c)
        out = CandidateOutcome(config=c, slot=slot, seed=seed, n_augmenters=len(augs), distinct=data.distinct,
                               too_long=data.too_long, n_sequences=n, epochs=c.num_train_epochs, epochs_budgeted=epochs,
                               total_steps=epochs * -(-n // opts.batch_size))
        if n == 0:
            out.failed = True
            out.failure = (f"no TTT data: all {data.distinct} sequences have {opts.max_tokens} tokens or more"
                           if data.distinct else "no TTT data: the task yields no pseudo-tasks")
        slot_outcomes.append(out)
        datasets.append([] if n == 0 else data.examples(c.strategy))
        specs.append(il.TrainSpec(learning_rate=c.learning_rate, schedule=opts.schedule,
                                  warmup_steps=opts.warmup_steps, epochs=epochs, batch_size=opts.batch_size,
                                  max_grad_norm=opts.max_grad_norm, weight_decay=opts.weight_decay, seed=seed))

    lora = init_lora(model.config, opts.lora, jax.random.PRNGKey(opts.seed), num_adapters=K, shared_init=True)
    if any(datasets):
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        plan = il.build_plan(datasets, specs, loss_mode="completion", pad_id=pad_id, max_length=opts.max_tokens,
                             length_buckets=opts.length_buckets, num_adapters=K)
        state = il.train_adapters(model, lora, plan)
        lora = state.lora
        steps, failed, losses = (np.asarray(x) for x in (state.step, state.failed, state.losses))
        real_tokens = plan.real_tokens
    else:  # nothing to train: every candidate already failed
        steps, failed, losses = np.zeros(K, int), np.zeros(K, bool), np.zeros((K, 0))
        real_tokens = np.zeros(K, int)
    usable = [False] * K
    for out in slot_outcomes:
        s = out.slot
        taken = losses[s][:int(steps[s])]
        out.steps = int(steps[s])
        out.train_tokens = int(real_tokens[s])
        out.first_loss = float(taken[0]) if len(taken) else None
        out.final_loss = float(taken[-1]) if len(taken) else None
        if bool(failed[s]) and not out.failed:
            out.failed = True
            out.failure = f"non-finite loss or gradient at optimiser step {int(steps[s])} of {out.total_steps}"
        usable[s] = not out.failed
    outcomes = [dataclasses.replace(slot_outcomes[distinct[c.to_json()]], config=c) for c in configs]
    return TrainedCandidates(lora=lora, outcomes=outcomes, usable=usable, seconds=time.perf_counter() - t0)


def evaluate_configs(model: Model, tokenizer, task: ArcTask, configs: Sequence[SelfEditConfig],
                     opts: TTTOptions = TTTOptions(), inference_opts=None, num_adapters: int | None = None,
                     ) -> list[dict[str, Any]]:
    """TTT + augmented inference + voting + scoring of every configuration for one task (reward = task solved).

    Configurations are trained in batches of `num_adapters` distinct ones (default: all at once); each usable
    adapter answers the task's inference queries of every test input in one multi-adapter generation call. Returns
    one JSON-ready record per configuration (same order): the training outcome, per test input the number of
    queries and parsed answers and the two voted attempts, per-test correctness, and ``correct`` (all test inputs
    solved) — False for a failed candidate."""
    from seal_jax.arc import inference

    iopts = inference_opts or inference.InferenceOptions()
    queries = inference.build_task_queries(tokenizer, task, iopts)
    K = num_adapters or max(len({c.to_json() for c in configs}), 1)
    records: list[dict[str, Any] | None] = [None] * len(configs)
    cache: dict = {}
    for chunk in chunk_unique(configs, K):
        trained = train_candidates(model, tokenizer, task, [configs[i] for i in chunk], opts, K, cache)
        t0 = time.perf_counter()
        groups = [queries if ok else None for ok in trained.usable]
        predictions = inference.predict(model, tokenizer, groups, iopts, lora=trained.lora)
        infer_s = time.perf_counter() - t0
        for i, out in zip(chunk, trained.outcomes):
            rec = out.to_dict()
            preds = predictions[out.slot] if trained.usable[out.slot] else None
            rec.update(inference.score_predictions(task, queries, preds))
            rec["train_seconds"] = trained.seconds
            rec["inference_seconds"] = infer_s
            records[i] = rec
    return records  # type: ignore[return-value]

"""ARC inference with augmentation and voting (spec section 1.5): queries, batched greedy answers, inverse transforms,
the original's two-attempt vote, and all-or-nothing task scoring.

Queries (`leave_one_out_queries`, the original's ``get_leave_n_test_task`` with include_n [1], permute_n 2): for every
test input of a task and every demonstration i, one query with the other N-1 demonstrations in their original order
plus `permute_n` random re-orderings (de-duplicated, first occurrence kept); then, for each of the invertible
augmenters Transpose, Flip(0), Flip(1), Rotate(90), Rotate(180), one query drawn at random from that list is
transformed (every grid, the real test input included) and added unless it duplicates a query already there, with
the augmenter's inverse recorded. The real test input is always the query's input; the full N-demonstration prompt is
never used (as the original, W9). No colour permutation. A seeded generator replaces the original's set order, so the
queries are the same in every process. Queries whose prompt plus answer budget exceed `max_tokens` are dropped; when
none remain, leave-2 queries (N-2 demonstrations) are tried.

Prompts are the TTT chat layout without the answer, ending with the assistant header, with a single BOS (the original
strips its own BOS before vLLM adds one). Answers are greedy, stop at the tokenizer's end tokens, and are parsed with
`grids.parse_model_grid` (or the original's permissive `parse_grid_original`), then mapped back by the inverse
transform; unparseable or non-invertible answers are skipped.

Voting (`vote`, the original's ``arclib/voting.py``): predictions grouped by inverse category (``identity`` for
plain queries) plus an ``all`` group; each present category among all, identity, Transpose(), Flip(0), Flip(1),
Rotate(180), Rotate(270) contributes its three most frequent answers (missing ones filled by a row-wise then a
column-wise majority grid); the pooled candidates are ranked the same way, a tie between the 2nd and 3rd goes to the
one more frequent among identity predictions (the 3rd on a tie), and the top two are the attempts. Ranking ties
(equal counts) go to the answer seen first, where the original used set order.

Scoring (`score_predictions`): a test input is solved when either attempt equals its output exactly (shape and
values); the task counts only if every test input is solved.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from typing import Any, Sequence

import numpy as np

from seal_jax import generation
from seal_jax.arc.augment import AugmentError, Augmenter, Flip, Rotate, Transpose, get_augmenter, make_rng
from seal_jax.arc.data import ArcExample, ArcTask
from seal_jax.arc.grids import (OUTPUT_FOOTER, TTT_INSTRUCTION, Grid, parse_grid_original, parse_model_grid, to_text,
                                ttt_messages)
from seal_jax.buckets import bucket
from seal_jax.lora import Lora

__all__ = ["INFERENCE_AUGMENTERS", "PARSERS", "VOTES", "VOTE_CATEGORIES", "InferenceOptions", "Prediction", "Query",
           "TaskQueries", "auto_answer_budget", "build_task_queries", "decode_prediction", "inverse_category",
           "leave_one_out_queries", "predict", "query_prompt_ids", "score_predictions", "vote"]

INFERENCE_AUGMENTERS = ("transpose", "flip_0", "flip_1", "rotate_90", "rotate_180")
VOTE_CATEGORIES = ("all", "identity", "Transpose()", "Flip(0)", "Flip(1)", "Rotate(180)", "Rotate(270)")
PARSERS = ("model", "original")
VOTES = ("clean", "original")


@dataclasses.dataclass(frozen=True)
class InferenceOptions:
    """Query construction, decoding and answer parsing. Defaults are the original's except where noted."""

    permute_n: int = 2  # random re-orderings per leave-one-out query
    augmenters: tuple[str, ...] = INFERENCE_AUGMENTERS
    seed: int = 0
    max_tokens: int = 8192  # prompt + answer budget per query
    answer_max_tokens: int | None = None  # new-token budget; None = `auto_answer_budget` (the original: unbounded)
    parser: str = "model"  # "model" (strict grids) or "original" (reshapes ragged answers whose size divides)
    prompt_buckets: tuple[int, ...] | None = None  # prompt length buckets for generation (None: powers of two)
    max_rows: int = 64  # generation rows (queries) per call; bounds the KV cache
    vote: str = "clean"  # "clean" (ties to the first seen) or "original" (the original's set/argsort order; `vote`)
    instruction: str = TTT_INSTRUCTION  # the system message's opening paragraph (the original's from --prompts)

    def __post_init__(self):
        object.__setattr__(self, "augmenters", tuple(self.augmenters))
        if self.parser not in PARSERS:
            raise ValueError(f"unknown answer parser {self.parser!r}; expected one of {', '.join(PARSERS)}")
        if self.vote not in VOTES:
            raise ValueError(f"unknown vote {self.vote!r}; expected one of {', '.join(VOTES)}")
        if self.permute_n < 0 or self.max_rows < 1 or self.max_tokens < 2:
            raise ValueError(f"invalid InferenceOptions {self}")
        for name in self.augmenters:
            if not get_augmenter(name).invertible or get_augmenter(name).random:
                raise ValueError(f"inference augmenter {name!r} must be deterministic and invertible")


def inverse_category(augmenter: Augmenter | None) -> str:
    """The voting category of a query: the original's label of the inverse transform (``identity`` for none)."""
    if augmenter is None:
        return "identity"
    if isinstance(augmenter, Rotate):
        return Rotate(360 - augmenter.angle).label
    if isinstance(augmenter, (Flip, Transpose)):
        return augmenter.label
    return f"inverse of {augmenter.label}"


@dataclasses.dataclass(frozen=True)
class Query:
    """One inference prompt: demonstrations, the (possibly transformed) test input, and the transform's name."""

    demonstrations: tuple[ArcExample, ...]
    test_input: Grid
    augmenter: str | None = None

    @property
    def category(self) -> str:
        return inverse_category(None if self.augmenter is None else get_augmenter(self.augmenter))

    def key(self) -> tuple:
        return tuple((e.input, e.output) for e in self.demonstrations), self.test_input

    def messages(self, instruction: str = TTT_INSTRUCTION) -> list[dict[str, str]]:
        return ttt_messages(self.demonstrations, self.test_input, instruction=instruction)


def _transform(query: Query, name: str) -> Query:
    aug = get_augmenter(name)
    demos = tuple(ArcExample(aug.apply_to_grid(e.input), aug.apply_to_grid(e.output)) for e in query.demonstrations)
    return Query(demos, aug.apply_to_grid(query.test_input), name)


def leave_one_out_queries(demonstrations: Sequence[ArcExample], test_input: Grid, n: int = 1, permute_n: int = 2,
                          augmenters: Sequence[str] = INFERENCE_AUGMENTERS, seed: int = 0) -> list[Query]:
    """The queries of one test input (see the module docstring); n = demonstrations left out of each query."""
    rng = make_rng(seed)
    demos = tuple(demonstrations)
    N = len(demos)
    base: dict[tuple, Query] = {}
    for i in range(N):
        for removed in itertools.combinations([j for j in range(N) if j != i], n - 1):
            drop = {i, *removed}
            kept = tuple(d for j, d in enumerate(demos) if j not in drop)
            q = Query(kept, test_input)
            base.setdefault(q.key(), q)
            for _ in range(permute_n):
                order = rng.permutation(len(kept))
                p = Query(tuple(kept[int(k)] for k in order), test_input)
                base.setdefault(p.key(), p)
    plain = list(base.values())
    out = dict(base)
    for name in augmenters:
        if not plain:
            break
        q = _transform(plain[int(rng.integers(len(plain)))], name)
        out.setdefault(q.key(), q)
    return list(out.values())


def query_prompt_ids(tokenizer, query: Query, instruction: str = TTT_INSTRUCTION) -> list[int]:
    """Token ids of a query: the chat rendered with the generation header, one BOS (the template's)."""
    return tokenizer.encode(tokenizer.chat_prompt_text(query.messages(instruction), add_generation_prompt=True),
                            add_bos=False)


def auto_answer_budget(tokenizer, task: ArcTask) -> int:
    """New-token budget when none is given: twice the tokens of the task's longest demonstration answer (grid and
    ``#``) plus 8, so an answer up to about twice the size of any demonstration output fits. The original let
    answers run to the context end (8192 tokens)."""
    longest = max(len(tokenizer.encode(to_text(e.output) + OUTPUT_FOOTER, add_bos=False)) for e in task.train)
    return 2 * longest + 8


@dataclasses.dataclass(frozen=True)
class TaskQueries:
    """The queries of every test input of one task, with their prompt ids and the answer budget."""

    task_id: str
    instances: tuple[tuple[Query, ...], ...]  # per test input
    prompts: tuple[tuple[tuple[int, ...], ...], ...]  # per test input, per query
    answer_budget: int

    def flat_prompts(self) -> list[list[int]]:
        return [list(p) for inst in self.prompts for p in inst]

    def sizes(self) -> list[int]:
        return [len(inst) for inst in self.instances]


def build_task_queries(tokenizer, task: ArcTask, opts: InferenceOptions = InferenceOptions()) -> TaskQueries:
    """Queries and prompt ids for every test input of `task` (leave-1; leave-2 when no leave-1 query fits)."""
    budget = opts.answer_max_tokens or auto_answer_budget(tokenizer, task)
    instances, prompts = [], []
    for ex in task.test:
        kept: list[tuple[Query, list[int]]] = []
        for n in (1, 2):
            qs = leave_one_out_queries(task.train, ex.input, n=n, permute_n=opts.permute_n,
                                       augmenters=opts.augmenters, seed=opts.seed)
            ids = [query_prompt_ids(tokenizer, q, opts.instruction) for q in qs]
            kept = [(q, i) for q, i in zip(qs, ids) if len(i) + budget <= opts.max_tokens]
            if kept or n >= len(task.train):
                break
        instances.append(tuple(q for q, _ in kept))
        prompts.append(tuple(tuple(i) for _, i in kept))
    return TaskQueries(task.task_id, tuple(instances), tuple(prompts), budget)


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One decoded answer: the raw text, the grid mapped back by the inverse transform (None when unusable), the
    voting category, and why it is unusable."""

    text: str
    grid: Grid | None
    category: str
    error: str | None = None


def decode_prediction(text: str, query: Query, parser: str = "model") -> Prediction:
    """Parse an answer and undo the query's transform."""
    grid = parse_model_grid(text) if parser == "model" else parse_grid_original(text)
    if grid is None:
        return Prediction(text, None, query.category, "no well-formed grid")
    if query.augmenter is not None:
        try:
            grid = get_augmenter(query.augmenter).invert_grid(grid)
        except AugmentError as e:
            return Prediction(text, None, query.category, f"cannot invert: {e}")
    return Prediction(text, grid, query.category)


def _answer_calls(rows: list[tuple[list[int], int, int]], max_rows: int, prompt_buckets) -> list[list[int]]:
    """Indices of `rows` (prompt, adapter, budget) per generation call, whichever tasks or adapters they come from:
    rows grouped by answer-budget bucket (a call decodes to its largest budget's bucket, and decoding dominates, so
    a call never mixes budget buckets), ordered within a group by prompt-length bucket and budget, and cut every
    `max_rows` rows."""
    def budget_bucket(i):
        return bucket(rows[i][2], minimum=1)

    order = sorted(range(len(rows)), key=lambda i: (budget_bucket(i), bucket(len(rows[i][0]), prompt_buckets),
                                                    rows[i][2], i))
    calls: list[list[int]] = []
    for i in order:
        if not calls or len(calls[-1]) == max_rows or budget_bucket(calls[-1][0]) != budget_bucket(i):
            calls.append([])
        calls[-1].append(i)
    return calls


def predict(model, tokenizer, groups: Sequence[TaskQueries | None], opts: InferenceOptions = InferenceOptions(),
            lora: Lora | None = None, mesh=None) -> list[list[list[Prediction]] | None]:
    """Greedy answers to every group's queries: group g with adapter g of `lora` (a batch of len(groups)), or all
    groups with the base model when `lora` is None. A None group is skipped (its result is None).

    Every query of every group is one row with its own adapter and its own task's answer budget; rows are grouped
    into calls of at most `opts.max_rows` by `_answer_calls` (one answer-budget bucket per call) and answered with
    `generation.generate`, each row tagged with its adapter in the whole bank, so the bank's shape never changes
    between calls. A row's answer does not depend on which rows share its call. mesh: rows spread over its
    "adapter" axis (the model placed on it). Returns, per group, per test input, the predictions in query order."""
    stop = tokenizer.stop_token_ids
    if lora is not None and lora.num_adapters != len(groups):
        raise ValueError(f"{len(groups)} query groups for a batch of {lora.num_adapters} adapters")
    rows: list[tuple[list[int], int, int]] = []  # (prompt, adapter (-1: base), budget)
    owners: list[tuple[int, int]] = []  # (group, query index within the group)
    outs: list[list[list[int]] | None] = [None] * len(groups)
    for g, tq in enumerate(groups):
        if tq is None:
            continue
        prompts = tq.flat_prompts()
        outs[g] = [[] for _ in prompts]
        for j, p in enumerate(prompts):
            rows.append((p, -1 if lora is None else g, tq.answer_budget))
            owners.append((g, j))
    for call in _answer_calls(rows, opts.max_rows, opts.prompt_buckets):
        got = generation.generate(
            model, [rows[i][0] for i in call], max_new_tokens=[rows[i][2] for i in call], stop_token_ids=stop,
            lora=lora, adapter_ids=None if lora is None else [rows[i][1] for i in call],
            prompt_buckets=opts.prompt_buckets, mesh=mesh)
        for i, o in zip(call, got):
            g, j = owners[i]
            outs[g][j] = o
    result: list[list[list[Prediction]] | None] = []
    for tq, o in zip(groups, outs):
        if tq is None:
            result.append(None)
            continue
        texts = [tokenizer.decode(ids) for ids in o]
        per_instance, pos = [], 0
        for inst in tq.instances:
            per_instance.append([decode_prediction(texts[pos + i], qr, opts.parser) for i, qr in enumerate(inst)])
            pos += len(inst)
        result.append(per_instance)
    return result


# ------------------------------------------------------------------------------------------------------- voting

def _ranked(outputs: Sequence[Grid]) -> list[Grid]:
    """Distinct outputs by count, ties broken by first appearance."""
    counts = collections.Counter(outputs)  # insertion-ordered: first appearance
    return sorted(counts, key=lambda g: -counts[g])


def _transpose(grid: Grid) -> Grid:
    return tuple(zip(*grid))


def _row_majority(outputs: Sequence[Grid], transpose: bool = False) -> Grid:
    """The original's ``row_base_majority_voting``: the most common shape, then per row (or column) the most common
    row of that width."""
    grids = [_transpose(g) for g in outputs] if transpose else list(outputs)
    shape = _ranked([(len(g), len(g[0])) for g in grids])[0]
    rows = []
    for r in range(shape[0]):
        rows.append(_ranked([g[r] for g in grids if len(g) > r and len(g[r]) == shape[1]])[0])
    grid = tuple(rows)
    return _transpose(grid) if transpose else grid


def _as_grid(array) -> Grid:
    return tuple(tuple(int(v) for v in row) for row in array.tolist())


def _row_majority_original(outputs: Sequence[Grid], transpose: bool = False) -> Grid:
    """``row_base_majority_voting`` computed as the original does: the most common shape and each most common row
    by ``max(set(...), key=count)``, so a tie goes to whichever comes first in Python's set order."""
    grids = [_as_grid(np.array(g).T) for g in outputs] if transpose else list(outputs)
    shapes = [np.array(g).shape for g in grids]
    n_rows, n_cols = max(set(shapes), key=shapes.count)
    rows = []
    for r in range(n_rows):
        candidates = [g[r] for g in grids if len(g) > r and len(g[r]) == n_cols]
        rows.append(max(set(candidates), key=candidates.count))
    grid = np.array(rows)
    return _as_grid(grid.T if transpose else grid)


def _top3(outputs: Sequence[Grid], original: bool = False) -> tuple[Grid | None, Grid | None, Grid | None]:
    """The original's ``get_all_type_of_votingsv2``: most common, 2nd and 3rd most common, with missing ones filled
    by the row-wise then the column-wise majority grid.

    original=False ranks distinct outputs by count, ties to the first seen. original=True computes the ranking as
    the original does: distinct outputs in Python's set order, the most common by ``np.argmax`` (the first maximum in
    that order), the 2nd and 3rd by ``np.argsort`` of the counts (whose last places hold the later maxima), and the
    majority grids by `_row_majority_original`. So when two outputs tie for first place the original's "2nd" is the
    1st again and is replaced by the row-majority (else column-majority) grid: the runner-up is not an attempt."""
    if not outputs:
        return None, None, None
    outputs = list(outputs)
    if original:
        unique = list(set(outputs))
        counts = [outputs.count(o) for o in unique]
        order = np.argsort(counts)
        first = unique[int(np.argmax(counts))]
        second = unique[order[-2]] if len(unique) > 1 else first
        third = unique[order[-3]] if len(unique) > 2 else first
        majority = _row_majority_original
    else:
        ranked = _ranked(outputs)
        first = ranked[0]
        second = ranked[1] if len(ranked) > 1 else first
        third = ranked[2] if len(ranked) > 2 else first
        majority = _row_majority
    row = majority(outputs)
    col = majority(outputs, transpose=True)
    if second == first:
        second = row if row != first else col
    if third in (first, second):
        third = row if row not in (first, second) else col
    return first, second, third


def vote(predictions: Sequence[tuple[Grid, str]], mode: str = "clean") -> tuple[Grid | None, Grid | None]:
    """Two attempts from (grid, category) predictions (the original's ``vote``); (None, None) without any.

    mode "clean": counting ties go to the answer seen first, so on a tie for first place the runner-up is the
    second attempt. "original": the original's order of distinct answers (`_top3(original=True)`), which on such a
    tie gives the row/column-majority grid as the second attempt instead."""
    if mode not in VOTES:
        raise ValueError(f"unknown vote {mode!r}; expected one of {', '.join(VOTES)}")
    original = mode == "original"
    by_category: dict[str, list[Grid]] = {}
    for grid, category in predictions:
        by_category.setdefault(category, []).append(grid)
    by_category["all"] = [g for gs in list(by_category.values()) for g in gs]
    candidates: list[Grid] = []
    for key in VOTE_CATEGORIES:
        if by_category.get(key):
            candidates += [c for c in _top3(by_category[key], original) if c is not None]
    if not candidates:
        return None, None
    c1, c2, c3 = _top3(candidates, original)
    if candidates.count(c2) == candidates.count(c3) and "identity" in by_category:
        identity = by_category["identity"]
        if identity.count(c2) > identity.count(c3):
            c3 = c2
        else:
            c2 = c3
    return c1, c2


def score_predictions(task: ArcTask, queries: TaskQueries,
                      predictions: Sequence[Sequence[Prediction]] | None, vote_mode: str = "clean") -> dict[str, Any]:
    """Vote and score one task's predictions (None: no adapter to ask, every test input unsolved).

    Returns a JSON-ready dict: ``n_queries`` and ``n_parsed`` per test input, ``attempts`` (two grids or None per
    test input), ``test_correct`` per test input, and ``correct`` (every test input solved)."""
    n_queries = queries.sizes()
    if predictions is None:
        return {"n_queries": n_queries, "n_parsed": [0] * len(task.test), "attempts": [[None, None]] * len(task.test),
                "test_correct": [False] * len(task.test), "correct": False}
    attempts, solved, parsed = [], [], []
    for ex, preds in zip(task.test, predictions):
        usable = [(p.grid, p.category) for p in preds if p.grid is not None]
        a1, a2 = vote(usable, vote_mode)
        attempts.append([a1, a2])
        parsed.append(len(usable))
        solved.append(ex.output is not None and ex.output in (a1, a2))
    return {"n_queries": n_queries, "n_parsed": parsed, "attempts": attempts, "test_correct": solved,
            "correct": len(solved) == len(task.test) and all(solved)}

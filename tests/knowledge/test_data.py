"""seal_jax.knowledge.data: SEAL-format loading and validation, the seed-42 selection (200 passages / 974 questions
on the real squad_val.json), the shipped self-edit and SFT files against the spec's data inventory, SQuAD conversion."""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
import types

import pytest

from seal_jax.knowledge.data import (
    EVAL_N_PASSAGES,
    HubUnavailableError,
    Passage,
    Question,
    load_passages,
    load_sft_examples,
    load_squad,
    passages_from_records,
    save_passages,
    select_passages,
    squad_rows_to_passages,
    take_completions,
)
from tests.conftest import shared_path


def _self_edit_path(name: str) -> str:
    return shared_path("data", "seal_self_edits", name)


@pytest.fixture(scope="module")
def squad_val() -> list[Passage]:
    return load_passages(shared_path("data", "squad", "squad_val.json"))


def _n_questions(passages) -> int:
    return sum(p.n_questions for p in passages)


def _same_items(a: Passage, b: Passage) -> bool:
    return (a.title, a.context, a.questions) == (b.title, b.context, b.questions)


# ------------------------------------------------------------------------------------------------ real data

def test_squad_val_inventory(squad_val):
    """Spec S0 / section 4: 2067 passages, 10570 questions (1-30 per passage), 48 titles, no self-edits."""
    assert len(squad_val) == 2067
    assert _n_questions(squad_val) == 10570
    assert len({p.title for p in squad_val}) == 48
    assert min(p.n_questions for p in squad_val) == 1 and max(p.n_questions for p in squad_val) == 30
    assert all(p.completions == () and p.prompt is None for p in squad_val)
    assert squad_val[0].questions[0] == Question("Which NFL team represented the AFC at Super Bowl 50?",
                                                 "Denver Broncos")


def test_seed42_selection_gives_the_eval_set(squad_val):
    """Spec S1: the first 200 of the seed-42 shuffle hold 974 questions, starting with val indices 1168, 760, 685,
    1193, and equal the global `random.seed(42); random.shuffle` order without touching the global state."""
    state = random.getstate()
    selected = select_passages(squad_val, EVAL_N_PASSAGES)
    assert random.getstate() == state
    assert len(selected) == 200
    assert _n_questions(selected) == 974
    index = {id(p): i for i, p in enumerate(squad_val)}
    assert [index[id(p)] for p in selected[:4]] == [1168, 760, 685, 1193]

    reference = list(squad_val)
    random.seed(42)
    random.shuffle(reference)
    random.setstate(state)
    assert selected == reference[:200]
    assert select_passages(squad_val, 50, start=200) == reference[200:250]
    assert select_passages(squad_val, start=2000) == reference[2000:]
    assert len(squad_val) == 2067 and squad_val[0].title == "Super Bowl 50"  # the input is not shuffled in place


@pytest.mark.parametrize("name", ["base_val.json", "iter2_val.json", "gpt4_1_val.json"])
def test_eval_self_edit_files_are_the_seed42_prefix(squad_val, name):
    """Section 4: each eval self-edit file is the first 200 of the seed-42 shuffle (974 questions), 5 completions per
    passage, with the generation prompt stored."""
    edits = load_passages(_self_edit_path(name))
    assert len(edits) == 200 and _n_questions(edits) == 974
    assert all(_same_items(a, b) for a, b in zip(edits, select_passages(squad_val, 200)))
    assert {len(p.completions) for p in edits} == {5}
    assert all(p.prompt and p.prompt.endswith("Implications:\n") for p in edits)


@pytest.mark.parametrize("name, median_chars", [("base_val.json", 738), ("iter2_val.json", 758),
                                                ("gpt4_1_val.json", 2062)])
def test_self_edit_median_lengths(name, median_chars):
    """Section 4's median completion lengths (the spec rounds 737.5 and 757.5 to whole characters)."""
    edits = load_passages(_self_edit_path(name))
    median = statistics.median(len(c) for p in edits for c in p.completions)
    assert abs(median - median_chars) <= 0.5


def test_gpt41_row_inputs():
    """The GPT-4.1-synthetic row trains on the first (non-empty) completion of each of the 200 passages; 42 of the
    1000 GPT-4.1 completions use the `---` separator (that is what makes the CPT corpus 2082 rather than 2000)."""
    edits = load_passages(_self_edit_path("gpt4_1_val.json"))
    firsts = [take_completions(p, 1) for p in edits]
    assert all(len(c) == 1 and c[0] == p.completions[0] for c, p in zip(firsts, edits))
    assert sum("---" in c for p in edits for c in p.completions) == 42


def test_iter0_train_inventory():
    """Section 4: iter0_train has 100 passages / 467 questions with 10 completions each; the 50 used hold 225."""
    train = load_passages(_self_edit_path("iter0_train.json"))
    assert len(train) == 100 and _n_questions(train) == 467
    assert {len(p.completions) for p in train} == {10}
    assert _n_questions(train[:50]) == 225


def test_sft_rows_are_top1_of_the_first_50_train_passages():
    """Spec S4: sft_best1of5_iter0.jsonl has 50 {prompt, completion} rows, row i holding passage i's exact generation
    prompt and one of its first 5 completions."""
    rows = load_sft_examples(_self_edit_path("sft_best1of5_iter0.jsonl"))
    train = load_passages(_self_edit_path("iter0_train.json"))
    assert len(rows) == 50
    for row, passage in zip(rows, train):
        assert row.prompt == passage.prompt
        assert row.completion in take_completions(passage, 5)


# ------------------------------------------------------------------------------------------------ in-memory

def _record(**overrides):
    record = {"title": "T", "context": "C", "questions": [{"question": "q?", "answer": "a"}]}
    record.update(overrides)
    return record


def test_records_round_trip(tmp_path):
    records = [_record(), _record(title="U", completions=["x", ""], prompt="P\n"), _record(questions=[])]
    passages = passages_from_records(records)
    assert passages[0] == Passage("T", "C", (Question("q?", "a"),))
    assert passages[1].completions == ("x", "") and passages[1].prompt == "P\n"
    assert passages[2].n_questions == 0
    assert [p.to_dict() for p in passages] == records
    path = tmp_path / "out.json"
    save_passages(path, passages)
    assert load_passages(path) == passages


def test_passages_are_frozen_and_hashable():
    p = passages_from_records([_record(completions=["x"])])[0]
    with pytest.raises(AttributeError):
        p.title = "other"  # type: ignore[misc]
    assert len({p, passages_from_records([_record(completions=["x"])])[0]}) == 1


@pytest.mark.parametrize("records, expected", [
    ({"title": "T"}, "expected a JSON list of passages, got dict"),
    ([_record(), "oops"], "entry 1: expected an object"),
    ([_record(), _record(title=3)], "entry 1: field 'title' must be a string, got int"),
    ([{"title": "T", "questions": []}], "entry 0: missing field 'context'"),
    ([_record(questions={"question": "q"})], "entry 0: field 'questions' must be a list, got dict"),
    ([_record(questions=[{"question": "q?", "answer": "a"}, {"question": "q?"}])],
     "entry 0: questions[1]: missing field 'answer'"),
    ([_record(questions=[{"question": None, "answer": "a"}])],
     "entry 0: questions[0]: field 'question' must be a string, got null"),
    ([_record(completions="abc")], "entry 0: field 'completions' must be a list, got str"),
    ([_record(completions=["ok", 5])], "entry 0: completions[1] must be a string, got int"),
    ([_record(prompt=["multi\nline"])], "entry 0: field 'prompt' must be a string, got list"),
])
def test_malformed_files_give_one_line_errors(tmp_path, records, expected):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(records, indent=2))
    with pytest.raises(ValueError) as err:
        load_passages(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(str(path)) and expected in message


def test_invalid_json_and_encoding_give_one_line_errors(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"title": "T",\n}\n]')
    with pytest.raises(ValueError, match=r"broken\.json: invalid JSON \(.* at line 3, column 1\)$") as err:
        load_passages(path)
    assert "\n" not in str(err.value)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b'["\xff"]')
    with pytest.raises(ValueError, match=r"binary\.json: not valid UTF-8") as err:
        load_passages(binary)
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError):
        load_passages(tmp_path / "missing.json")


def test_sft_examples_loading_and_errors(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text('{"prompt": "p1", "completion": "c1"}\n\n{"prompt": "p2", "completion": "c2", "x": 1}\n')
    assert [(r.prompt, r.completion) for r in load_sft_examples(path)] == [("p1", "c1"), ("p2", "c2")]
    for body, expected in [('{"prompt": "p"}\n', "line 1 lacks the field 'completion'"),
                           ('{"prompt": "p", "completion": 3}\n', "line 1: field 'completion' is not a string"),
                           ('{"prompt": "p", "completion": "c"}\n[1]\n', "line 2 is not a JSON object"),
                           ('{"prompt": "p", "completion": "c"}\n\n{bad\n', "line 3 is not valid JSON"),
                           (b'{"prompt": "p\xff"}\n', "not UTF-8 text")]:
        path.write_bytes(body if isinstance(body, bytes) else body.encode())
        with pytest.raises(ValueError) as err:
            load_sft_examples(path)
        assert "\n" not in str(err.value) and expected in str(err.value)


def test_select_passages_small():
    passages = passages_from_records([_record(title=str(i)) for i in range(10)])
    order = list(passages)
    random.Random(42).shuffle(order)
    assert select_passages(passages, 3) == order[:3]
    assert select_passages(passages, 3, start=8) == order[8:]
    assert select_passages(passages, 0) == []
    assert select_passages(passages, 3, seed=7) != select_passages(passages, 3)
    with pytest.raises(ValueError):
        select_passages(passages, -1)


def test_take_completions_drops_empty_then_truncates():
    p = passages_from_records([_record(completions=["", "a", "  ", "b", "c"])])[0]
    assert take_completions(p) == ("a", "b", "c")
    assert take_completions(p, 2) == ("a", "b")
    assert take_completions(p, 0) == ()
    assert take_completions(passages_from_records([_record(completions=["", ""])])[0], 1) == ()
    with pytest.raises(ValueError):
        take_completions(p, -1)


# ------------------------------------------------------------------------------------------------ SQuAD conversion

def _squad_row(title, context, question, answers):
    return {"id": question, "title": title, "context": context, "question": question,
            "answers": {"text": answers, "answer_start": [0] * len(answers)}}


SQUAD_ROWS = [
    _squad_row("Super_Bowl_50", "ctx A", "q1", ["Denver Broncos", "Denver Broncos", "Broncos"]),
    _squad_row("Super_Bowl_50", "ctx A", "q2", ['"golden anniversary"', "golden anniversary"]),
    _squad_row("Super_Bowl_50", "ctx B", "q3", ["x"]),
    _squad_row("Sky_(United_Kingdom)", "ctx C", "q4", ["y", "z"]),
    _squad_row("Super_Bowl_50", "ctx A", "q5", ["w"]),
]


def test_squad_rows_to_passages():
    passages = squad_rows_to_passages(SQUAD_ROWS)
    assert [(p.title, p.context, [(q.question, q.answer) for q in p.questions]) for p in passages] == [
        ("Super Bowl 50", "ctx A", [("q1", "Denver Broncos"), ("q2", '"golden anniversary"')]),
        ("Super Bowl 50", "ctx B", [("q3", "x")]),
        ("Sky (United Kingdom)", "ctx C", [("q4", "y")]),
        ("Super Bowl 50", "ctx A", [("q5", "w")]),  # a later, non-adjacent repeat stays its own passage
    ]
    assert squad_rows_to_passages(SQUAD_ROWS[:1], underscores_to_spaces=False)[0].title == "Super_Bowl_50"
    assert squad_rows_to_passages([]) == []


@pytest.mark.parametrize("row, expected", [
    (_squad_row("T", "c", "q", []), "row 0: field 'answers.text' must be a non-empty list"),
    ({"title": "T", "context": "c", "question": "q"}, "row 0: field 'answers.text'"),
    ({"title": "T", "context": "c", "answers": {"text": ["a"]}}, "row 0: missing field 'question'"),
    (_squad_row("T", "c", "q", [1]), "row 0: answers.text[0] must be a string, got int"),
])
def test_squad_rows_errors(row, expected):
    with pytest.raises(ValueError) as err:
        squad_rows_to_passages([row], source="squad[validation]")
    message = str(err.value)
    assert "\n" not in message and message.startswith("squad[validation]: ") and expected in message


@pytest.fixture
def online_mode(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def test_load_squad_fails_fast_when_the_hub_is_unreachable(online_mode):
    start = time.perf_counter()
    with pytest.raises(HubUnavailableError) as err:
        load_squad("validation", endpoint="http://127.0.0.1:9", probe_timeout=2.0)
    assert time.perf_counter() - start < 3.0
    assert "\n" not in str(err.value) and "http://127.0.0.1:9" in str(err.value)


def _fake_datasets(monkeypatch, load_dataset):
    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", module)
    monkeypatch.setattr("seal_jax.knowledge.data._hub_reachable", lambda endpoint, timeout: (True, ""))


def test_load_squad_converts_hub_rows(online_mode, monkeypatch):
    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        return SQUAD_ROWS[:3]

    _fake_datasets(monkeypatch, load_dataset)
    passages = load_squad("validation")
    assert calls == [("squad", "validation")]
    assert [p.n_questions for p in passages] == [2, 1] and passages[0].title == "Super Bowl 50"


def test_load_squad_wraps_hub_errors_in_one_line(online_mode, monkeypatch):
    def load_dataset(name, split):
        raise ConnectionError("Couldn't reach 'squad' on the Hub\n(LocalEntryNotFoundError)")

    _fake_datasets(monkeypatch, load_dataset)
    with pytest.raises(HubUnavailableError) as err:
        load_squad("train")
    assert "\n" not in str(err.value) and "'squad' split 'train'" in str(err.value)

"""`make demo` at toy scale: the shipped model and world run the whole loop (passage-only TTT, self-edits, batched
TTT, quiz, two ReST-EM rounds), print the table with its paired differences and write the plot; a re-run resumes
instead of redoing the work. The forgetting summary is checked on a hand-made matrix."""

import json
import os

import numpy as np
import pytest

from experiments import demo

pytestmark = pytest.mark.slow(minutes=2.5)  # its time in a parallel run: runs first, longest first (tests/conftest.py)

# One ReST-EM round keeps this module's (slow) setup as cheap as it was; the table of two rounds is checked on
# hand-made results files below.
SMALL = ["--n-eval-passages", "2", "--n-train-passages", "2", "--k", "2", "--eval-k", "1", "--rounds", "1",
         "--adapters-per-batch", "4", "--sft-epochs", "1", "--no-progress"]
ROWS = ["base model (no TTT)", "TTT on the passage only", "TTT on self-edits, iteration 0", "SEAL, ReST-EM round 1",
        "SEAL, ReST-EM round 2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert demo.main(["--out", str(out), *SMALL]) == 0
    return out


def test_prints_every_row_and_the_paired_differences(run, capsys):
    res = json.load(open(run / "demo_results.json"))
    assert [r["setting"] for r in res["rows"]] == ROWS[:4]
    for r in res["rows"]:
        assert r["n"] == 2 and 0.0 <= r["accuracy"] <= 1.0 and r["ci95"] >= 0.0
    assert [(d["baseline"], d["setting"]) for d in res["paired"]] == list(zip(ROWS[:3], ROWS[1:4]))
    acc = {r["setting"]: r["accuracy"] for r in res["rows"]}
    for d in res["paired"]:
        assert d["n"] == 2 and d["interval"] == "paired t" and d["ci95"] >= 0.0
        assert d["mean"] == pytest.approx(acc[d["setting"]] - acc[d["baseline"]])  # same passages: means subtract
    assert os.path.getsize(run / "demo_results.png") > 0
    assert (run / "data" / "eval.json").exists()
    assert len(json.load(open(run / "restem" / "round_0" / "selection.json"))) == 2


def test_rerun_resumes_from_the_finished_stages(run, capsys):
    before = json.load(open(run / "demo_results.json"))
    events = sum(1 for _ in open(run / "restem" / "events.jsonl"))
    assert demo.main(["--out", str(run), *SMALL]) == 0
    assert json.load(open(run / "demo_results.json")) == before
    new = [json.loads(l) for l in list(open(run / "restem" / "events.jsonl"))[events:]]
    assert not any(e.get("event") in ("selection", "policy") for e in new), new
    out = capsys.readouterr().out
    assert "SEAL, ReST-EM round 1" in out and "paired 95% CI" in out


def _results(base, adapter, spread):
    """Results (the results.json schema) with per-passage baseline / adapter means (two self-edits each, std
    `spread`)."""
    arts = [{"passage_index": i, "stats": {"baseline_mean": b, "adapter_mean": a, "adapter_std_over_completions": spread},
             "completions": [{}, {}]} for i, (b, a) in enumerate(zip(base, adapter))]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    overall = {"baseline_mean_accuracy": mean(base), "baseline_ci95": 0.1, "adapter_mean_accuracy": mean(adapter),
               "adapter_ci95": 0.1, "n_articles": len(base)}
    return {"overall": overall, "articles": arts}


def test_table_of_two_rounds_by_hand():
    base = [0.0, 0.2, 0.0]
    passage = _results(base, [0.2, 0.2, 0.4], 0.0)
    policies = [_results(base, [0.4, 0.6, 0.4], 0.2), _results([0.0, 0.0, 0.2], [0.6, 0.6, 0.6], 0.2),
                _results([0.0, 0.0, 0.0], [0.8, 0.6, 1.0], 0.0)]
    rows, paired, extra = demo._table(passage, policies)
    assert [r[0] for r in rows] == ROWS
    assert [(d["baseline"], d["setting"]) for d in paired] == list(zip(ROWS, ROWS[1:])) + [(ROWS[2], ROWS[4])]
    # the base row is policy 0's baseline; round 1 - iteration 0: differences [0.2, 0.0, 0.2], mean 0.4 / 3,
    # sd = sqrt((0.0667^2 * 2 + 0.1333^2) / 2) = 0.11547, half-width = t(0.975, 2) 4.30265 * 0.11547 / sqrt(3)
    r1 = paired[2]
    assert r1["mean"] == pytest.approx(0.4 / 3) and r1["sd"] == pytest.approx(0.115470, abs=1e-6)
    assert r1["ci95"] == pytest.approx(4.30265 * 0.115470 / 3 ** 0.5, abs=1e-5)
    assert (r1["better"], r1["worse"]) == (2, 0)
    # sampling: both sides 0.2^2 / 2 = 0.02 per passage -> 0.04 of the differences' variance 0.013333
    assert r1["sampling_share"] == pytest.approx(0.04 / 0.115470 ** 2, rel=1e-4)
    # round 2 - iteration 0: differences [0.4, 0.0, 0.6]; passage only - base: [0.2, 0.0, 0.4] (no sampling part)
    assert paired[4]["mean"] == pytest.approx(1.0 / 3) and paired[0]["mean"] == pytest.approx(0.2)
    assert paired[0]["sampling_share"] == 0.0
    assert "| SEAL, ReST-EM round 1 - TTT on self-edits, iteration 0 | +13.3 |" in demo._markdown(rows, paired)


def test_forgetting_summary_by_hand():
    m = np.array([[0.0, 0.2, 0.0],    # before any edit
                  [0.8, 0.0, 0.0],    # after edit 1: passage 0 at 0.8 (its diagonal)
                  [0.6, 1.0, 0.0],    # after edit 2: passage 1 at 1.0; passage 0 fell to 0.6
                  [0.2, 0.4, 0.6]])   # after edit 3: passage 2 at 0.6; passages 0, 1 at 0.2, 0.4
    s = demo.forgetting_summary(m)
    assert s["diagonal"] == [0.8, 1.0, 0.6]
    assert s["before_any_edit"] == pytest.approx(0.2 / 3)
    (r2, r3) = s["retention"]
    assert r2 == {"after_edit": 2, "earlier_accuracy": pytest.approx(0.6), "earlier_diagonal": pytest.approx(0.8)}
    assert r3 == {"after_edit": 3, "earlier_accuracy": pytest.approx(0.3), "earlier_diagonal": pytest.approx(0.9)}

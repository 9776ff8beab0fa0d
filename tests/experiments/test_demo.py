"""`make demo` at toy scale: the shipped model and world run the whole loop (passage-only TTT, self-edits, batched
TTT, quiz, ReST-EM round 1), print the table and write the plot; a re-run resumes instead of redoing the work."""

import json
import os

import pytest

from experiments import demo

SMALL = ["--n-eval-passages", "2", "--n-train-passages", "2", "--k", "2", "--adapters-per-batch", "4",
         "--sft-epochs", "1", "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert demo.main(["--out", str(out), *SMALL]) == 0
    return out


def test_prints_every_row_and_writes_the_plot(run, capsys):
    rows = json.load(open(run / "demo_results.json"))
    assert [r["setting"] for r in rows] == ["base model (no TTT)", "TTT on the passage only",
                                            "TTT on self-edits, iteration 0", "SEAL, ReST-EM round 1"]
    for r in rows:
        assert r["n"] == 2 and 0.0 <= r["accuracy"] <= 1.0 and r["ci95"] >= 0.0
    assert os.path.getsize(run / "demo_results.png") > 0
    assert (run / "data" / "eval.json").exists()
    sel = json.load(open(run / "restem" / "round_0" / "selection.json"))
    assert len(sel) == 2


def test_rerun_resumes_from_the_finished_stages(run, capsys):
    before = json.load(open(run / "demo_results.json"))
    events = sum(1 for _ in open(run / "restem" / "events.jsonl"))
    assert demo.main(["--out", str(run), *SMALL]) == 0
    assert json.load(open(run / "demo_results.json")) == before
    new = [json.loads(l) for l in list(open(run / "restem" / "events.jsonl"))[events:]]
    assert not any(e.get("event") in ("selection", "policy") for e in new), new
    assert "SEAL, ReST-EM round 1" in capsys.readouterr().out

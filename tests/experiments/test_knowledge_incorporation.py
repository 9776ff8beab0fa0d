"""End to end: a tiny random model on three real SQuAD passages runs every stage of the knowledge-incorporation
experiment and writes valid files; a run killed part-way finishes on re-run without redoing finished work."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import shared_path

pytestmark = pytest.mark.slow(minutes=2.5)  # its time in a parallel run: runs first, longest first (tests/conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from seal_jax.knowledge.data import load_passages, save_passages, select_passages
    from seal_jax.tokenizer import train_bpe_tokenizer_dir
    d = tmp_path_factory.mktemp("ki")
    passages = select_passages(load_passages(shared_path("data", "squad", "squad_val.json")), 3)
    save_passages(str(d / "data.json"), passages)
    texts = [p.context for p in passages] + [q.question + " " + q.answer for p in passages for q in p.questions]
    train_bpe_tokenizer_dir(texts, str(d / "tok"), vocab_size=512)
    return d


def common(world):
    return ["--preset", "tiny-qwen2", "--tokenizer", str(world / "tok"), "--dtype", "float32", "--lora-rank", "4",
            "--epochs", "1", "--loss-mode", "all", "--answer-max-tokens", "8", "--max-self-edit-tokens", "16",
            "--no-progress"]


def _events(run):
    with open(os.path.join(run, "events.jsonl")) as f:
        return [json.loads(l) for l in f]


def test_eval_killed_part_way_resumes(world):
    run = str(world / "eval")
    cmd = [sys.executable, "-m", "experiments.knowledge_incorporation", "eval", "--data", str(world / "data.json"),
           "--n-passages", "3", "--k", "1", "--eval-times", "2", "--slots", "2", "--out", run,
           *common(world)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    evals = os.path.join(run, "evals.jsonl")
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(evals) and os.path.getsize(evals) > 0:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.2)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-3000:]
    assert not os.path.exists(os.path.join(run, "results.json")), "the run finished before it could be killed"
    first = [json.loads(l) for l in open(evals)]
    assert 0 < len(first) < 6
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(l) for l in open(evals)]
    assert sorted(r["key"] for r in rows) == sorted(f"{p}/0/{r}" for p in range(3) for r in range(2))
    trained = sum(e["jobs"] for e in _events(run) if e["event"] == "ttt_batch")
    assert trained == 6  # the killed run's finished jobs were not trained again
    res = json.load(open(os.path.join(run, "results.json")))
    assert res["overall"]["n_articles"] == 3 and res["overall"]["n_questions"] == sum(
        len(a["completions"][0]["questions"]) // 2 for a in res["articles"])
    assert {"baseline_mean_accuracy", "adapter_mean_accuracy", "mean_gain"} <= set(res["overall"])
    q = res["articles"][0]["completions"][0]["questions"][0]
    assert {"question", "answer", "baseline_answer", "adapter_answer", "baseline_correct", "adapter_correct"} <= set(q)
    assert "| base model (no TTT) |" in open(os.path.join(run, "summary.md")).read()
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)  # all done: no training
    assert again.returncode == 0
    assert sum(e["jobs"] for e in _events(run) if e["event"] == "ttt_batch") == 6


def test_rest_em_cpt_and_continual(world, tmp_path):
    from experiments import knowledge_incorporation as ki
    train = shared_path("data", "seal_self_edits", "iter0_train.json")
    run = str(tmp_path / "restem")
    ki.main(["rest-em", "--train-data", train, "--n-train-passages", "2", "--k", "2", "--rank-eval-times", "1",
             "--eval-data", str(world / "data.json"), "--n-eval-passages", "2", "--rounds", "1", "--sft-rank", "4",
             "--sft-epochs", "1", "--sft-batch-size", "2", "--adapters-per-batch", "4", "--out", run,
             *common(world)])
    sel = json.load(open(os.path.join(run, "round_0", "selection.json")))
    assert len(sel) == 2 and all(0 <= s["chosen"] < 2 for s in sel)
    sft_rows = [json.loads(l) for l in open(os.path.join(run, "round_0", "sft.jsonl"))]
    assert len(sft_rows) == 2 and all(r["prompt"] and r["completion"] for r in sft_rows)
    assert os.path.isdir(os.path.join(run, "round_0", "policy"))
    summary = open(os.path.join(run, "summary.md")).read()
    assert "SEAL, ReST-EM round 1" in summary and "self-edit TTT, iteration 0" in summary

    cpt = str(tmp_path / "cpt")
    ki.main(["cpt", "--data", str(world / "data.json"), "--n-passages", "3", "--k", "0", "--batch-size", "2",
             "--eval-question-limit", "2", "--out", cpt, *common(world)])
    res = json.load(open(os.path.join(cpt, "results.json")))
    assert res["overall"]["train_sequences"] == 6  # passage + empty per passage
    from seal_jax.knowledge.data import load_passages
    from seal_jax.knowledge.sequences import cpt_eval_questions
    asked = cpt_eval_questions([len(p.questions) for p in load_passages(str(world / "data.json"))[:3]], 2)
    assert res["overall"]["n_questions"] == res["overall"]["eval_questions"] == 2  # the original's debug subset
    assert sorted((r["passage_index"], q) for r in res["per_passage"] for q in r["question_indices"]) == sorted(asked)

    cont = str(tmp_path / "cont")
    ki.main(["continual", "--data", str(world / "data.json"), "--n-sequences", "1", "--n-datapoints", "2",
             "--out", cont, *common(world)])
    res = json.load(open(os.path.join(cont, "results.json")))
    assert len(res["mean_over_sequences"]) == 3 and len(res["mean_over_sequences"][0]) == 2
    assert os.path.getsize(os.path.join(cont, "forgetting.png")) > 1000


def test_empty_and_missing_self_edits_are_failed_samples_not_resampled(world, tmp_path):
    """A self-edit file whose passages have [] and ["", ""] as completions: nothing is sampled from the model, every
    passage stays in the table, the empty ones are failed samples with reward 0 and a reason."""
    from experiments import knowledge_incorporation as ki
    from seal_jax.knowledge.data import load_passages, save_passages
    import dataclasses
    ps = load_passages(str(world / "data.json"))
    edits = [dataclasses.replace(ps[0], completions=()), dataclasses.replace(ps[1], completions=("", " ")),
             dataclasses.replace(ps[2], completions=("", "the first usable self-edit\nand a second line"))]
    save_passages(str(tmp_path / "edits.json"), edits)
    run = str(tmp_path / "run")
    ki.main(["eval", "--self-edits", str(tmp_path / "edits.json"), "--n-passages", "3", "--k", "2", "--out", run,
             *common(world)])
    assert not os.path.exists(os.path.join(run, "self_edits.json"))  # nothing was sampled
    rows = {r["key"]: r for r in map(json.loads, open(os.path.join(run, "evals.jsonl")))}
    assert sorted(rows) == ["0/0/0", "1/0/0", "1/1/0", "2/0/0", "2/1/0"]
    assert rows["0/0/0"]["failed"] and rows["0/0/0"]["failure"] == "no self-edit was given"
    assert rows["1/1/0"]["failure"] == "the self-edit is empty" and rows["1/1/0"]["accuracy"] == 0.0
    assert not rows["2/1/0"]["failed"] and rows["2/1/0"]["steps"] > 0 and rows["2/0/0"]["failed"]
    res = json.load(open(os.path.join(run, "results.json")))
    assert res["overall"]["n_articles"] == 3 and res["overall"]["failed_self_edits"] == 4
    assert res["articles"][2]["completions"][1]["text"].startswith("the first usable")


def test_round_passages_one_file_per_round(tmp_path):
    """--train-data a,b: round r ranks file r's passages (the original's new passages per round); one file serves
    every round; round 0 keeps a file's completions, later rounds sample their own; a count mismatch is refused."""
    from seal_jax.knowledge.experiment import round_passages
    from seal_jax.knowledge.data import Passage, Question, save_passages

    def write(name, titles):
        save_passages(str(tmp_path / name), [Passage(title=t, context=f"{t} text.", questions=(Question("q?", "a"),),
                                                     completions=("an edit",)) for t in titles])
        return str(tmp_path / name)

    a, b = write("a.json", ["A1", "A2", "A3"]), write("b.json", ["B1", "B2"])
    rounds = round_passages(f"{a},{b}", 2, 2)
    assert [[p.title for p in ps] for ps in rounds] == [["A1", "A2"], ["B1", "B2"]]
    assert rounds[0][0].completions == ("an edit",) and rounds[1][0].completions == ()
    one = round_passages(a, 3, 5)
    assert [[p.title for p in ps] for ps in one] == [["A1", "A2", "A3"]] * 3
    assert round_passages(a, 2, 5, regenerate=True)[0][0].completions == ()
    with pytest.raises(SystemExit, match="names 2 files but --rounds is 3"):
        round_passages(f"{a},{b}", 3, 2)


def test_instruct_model_with_the_originals_strings(world, tmp_path):
    """--instruct-model --prompts: the self-edits are sampled from the original's instruct string (ChatML written
    out, so any tokenizer works), and the run finishes with the usual report."""
    from experiments import import_seal_prompts, knowledge_incorporation as ki
    from seal_jax.knowledge.data import load_passages
    from tests.test_original_prompts import SELF_EDIT_INSTRUCT, _checkout
    prompts = str(tmp_path / "prompts.json")
    assert import_seal_prompts.main([_checkout(tmp_path / "SEAL"), "--out", prompts]) == 0
    run = str(tmp_path / "instruct")
    assert ki.main(["eval", "--data", str(world / "data.json"), "--n-passages", "1", "--k", "1", "--instruct-model",
                    "--prompts", prompts, "--out", run, *common(world)]) in (0, None)
    p = load_passages(os.path.join(run, "self_edits.json"))[0]
    assert p.prompt == SELF_EDIT_INSTRUCT.format(title=p.title, context=p.context)
    assert json.load(open(os.path.join(run, "config.json")))["instruct_model"] is True
    assert json.load(open(os.path.join(run, "results.json")))["overall"]["n_articles"] == 1


def test_fidelity_original_sets_every_original_switch_and_explicit_flags_win(capsys):
    from experiments import knowledge_incorporation as ki
    from seal_jax.knowledge import experiment as kx
    base = ["rest-em", "--train-data", "T", "--preset", "tiny-qwen2", "--tokenizer", "TOK", "--out", "OUT"]
    clean, orig = ki.parse_args(base), ki.parse_args(base + ["--fidelity", "original"])
    assert ki.ORIGINAL
    for key, value in ki.ORIGINAL.items():
        assert getattr(clean, key) != value and getattr(orig, key) == value, key
    assert any("without --prompts" in n for n in kx.notes(orig))  # the wording stays ours unless the file is given
    assert not kx.notes(clean) and isinstance(orig, kx.RestEMConfig)
    assert ki.parse_args(base + ["--fidelity", "original", "--rank-split-newlines", "same"]).rank_split_newlines \
        == "same"
    # the original's runs: rank_iter0 split self-edits into lines, rank_iter1 did not (spec 7b.6)
    assert [kx.rank_split_newlines("original", r, True) for r in range(3)] == [True, False, False]
    assert [kx.rank_split_newlines("same", r, v) for r in range(2) for v in (True, False)] == [True, False] * 2

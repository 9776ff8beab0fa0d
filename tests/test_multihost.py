"""Two local processes joined with jax.distributed.initialize (gloo collectives on CPU) run one batched
inner-loop job: exactly one results file, equal to the single-process run; a killed run resumes."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import cpu_devices_env

pytestmark = pytest.mark.slow(minutes=5)  # its time in a parallel run: runs first, longest first (tests/conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOB = ["-m", "experiments.inner_loop_job", "--preset", "tiny-llama", "--adapters", "4", "--examples", "2",
       "--seq-len", "16", "--epochs", "2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes(argv: list[str], devices: int, n: int = 2) -> list[tuple[str, str]]:
    """`argv --distributed` on `n` local processes of `devices` CPU devices each, joined through jax.distributed on
    localhost (SEAL_COORDINATOR / SEAL_NUM_PROCESSES / SEAL_PROCESS_ID); each one's (stdout, stderr), every process
    checked to exit 0."""
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, *argv, "--distributed"], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE,
                              env=dict(cpu_devices_env(devices), SEAL_COORDINATOR=f"127.0.0.1:{port}",
                                       SEAL_NUM_PROCESSES=str(n), SEAL_PROCESS_ID=str(i)))
             for i in range(n)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, e[-3000:]
    return outs


def test_two_processes_write_one_results_file(tmp_path):
    out = str(tmp_path / "multi")
    outs = _processes([*JOB, "--out", out, "--mesh", "4,1"], devices=2)
    assert sorted(os.listdir(out)) == ["checkpoints", "results.json"] or sorted(os.listdir(out)) == ["results.json"]
    multi = json.load(open(os.path.join(out, "results.json")))
    assert multi["processes"] == 2 and multi["devices"] == 4
    assert "wrote" in outs[0][0] and "wrote" not in outs[1][0]  # only process 0 writes

    single_out = str(tmp_path / "single")
    proc = subprocess.run([sys.executable, *JOB, "--out", single_out, "--mesh", "1,1"], cwd=ROOT,
                          env=cpu_devices_env(1), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = json.load(open(os.path.join(single_out, "results.json")))
    assert multi["steps"] == single["steps"] == [4, 4, 4, 4]
    np.testing.assert_allclose(multi["final_loss"], single["final_loss"], atol=1e-5)


def test_sharded_engine_on_two_processes_equals_one_device():
    """The ragged engine on a (4, 2) mesh over 2 processes x 4 devices: each process feeds its own shards, and every
    adapter equals the single-device engine's (tests/sharded_engine.py)."""
    outs = _processes(["-m", "tests.sharded_engine", "--mesh", "4,2"], devices=4)
    assert not any(line.startswith("{") for line in outs[1][0].splitlines())  # only process 0 reports
    result = json.loads(outs[0][0].strip().splitlines()[-1])
    r = result["(4, 2)"]
    assert r["weights"] < 1e-5 and r["losses"] < 1e-5, r
    assert r["failed"] == result["reference"]["failed"] == [5, 13] and r["same_failures"] and r["same_real_tokens"]


def _knowledge_eval(out: str, processes: int = 1) -> None:
    """`knowledge_incorporation eval --mesh 4,2` on the demo model and world: one process of 8 devices, or
    `processes` of 8 / processes devices joined on localhost."""
    from seal_jax import demo_world
    from tests.conftest import DEMO_MODEL
    data = os.path.join(os.path.dirname(out), "world")
    if not os.path.exists(os.path.join(data, "eval.json")):
        demo_world.write_seal_files(demo_world.build_world(0), data)
    argv = ["-m", "experiments.knowledge_incorporation", "eval", "--model", DEMO_MODEL, "--dtype", "float32",
            "--data", os.path.join(data, "eval.json"), "--n-passages", "4", "--k", "1", "--max-self-edit-tokens", "48",
            "--loss-mode", "all", "--lora-targets", "q,v", "--epochs", "2", "--answer-max-tokens", "16",
            "--no-progress", "--mesh", "4,2", "--out", out]
    if processes > 1:
        _processes(argv, devices=8 // processes, n=processes)
        return
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, env=cpu_devices_env(8), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _evals(out: str) -> dict[str, dict]:
    with open(os.path.join(out, "evals.jsonl")) as f:
        return {r["key"]: r for r in map(json.loads, f)}


def test_knowledge_eval_on_two_processes(tmp_path):
    """A sharded knowledge eval over 2 processes x 4 devices sharing one run directory: process 0 writes, both
    agree on what is left (process 0's files), the records equal one process of 8 devices, and a rerun after losing
    two records trains exactly those two."""
    multi, single = str(tmp_path / "multi"), str(tmp_path / "single")
    _knowledge_eval(multi, processes=2)
    _knowledge_eval(single)
    a, b = _evals(multi), _evals(single)
    assert sorted(a) == sorted(b) and len(a) == 4
    for k in a:
        assert a[k]["answers"] == b[k]["answers"] and a[k]["correct"] == b[k]["correct"], k
        assert abs(a[k]["final_loss"] - b[k]["final_loss"]) < 1e-4, k
    res = json.load(open(os.path.join(multi, "results.json")))
    assert res["training"] == {"layout": "ragged", "mesh": "4,2"}
    (trained,) = [e for e in map(json.loads, open(os.path.join(multi, "events.jsonl"))) if e["event"] == "training"]
    assert trained["shards"] == 4 and trained["real_tokens"] > 0  # written once: process 0 only
    assert res["overall"] == json.load(open(os.path.join(single, "results.json")))["overall"]
    with open(os.path.join(multi, "evals.jsonl")) as f:
        lines = f.readlines()
    with open(os.path.join(multi, "evals.jsonl"), "w") as f:
        f.writelines(lines[:2])
    _knowledge_eval(multi, processes=2)
    again = _evals(multi)
    assert sorted(again) == sorted(a)
    for k in a:
        assert again[k]["answers"] == a[k]["answers"] and abs(again[k]["final_loss"] - a[k]["final_loss"]) < 1e-4
    trained = [e["jobs"] for e in map(json.loads, open(os.path.join(multi, "events.jsonl")))
               if e["event"] == "ttt_batch"]
    assert sum(trained) == 6  # 4 the first time, the 2 lost ones the second


def test_killed_job_resumes_from_its_checkpoint(tmp_path):
    out = str(tmp_path / "job")
    args = [sys.executable, *JOB, "--out", out, "--checkpoint-every", "1"]
    first = subprocess.run(args + ["--stop-after", "2"], cwd=ROOT, env=cpu_devices_env(1), capture_output=True,
                           text=True, timeout=600)
    assert first.returncode == 0 and "re-run to resume" in first.stdout, first.stderr[-2000:]
    assert not os.path.exists(os.path.join(out, "results.json"))
    second = subprocess.run(args, cwd=ROOT, env=cpu_devices_env(1), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0 and "resumed from step 2" in second.stdout, second.stderr[-2000:]
    straight = subprocess.run([sys.executable, *JOB, "--out", str(tmp_path / "straight")], cwd=ROOT,
                              env=cpu_devices_env(1), capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0
    a = json.load(open(os.path.join(out, "results.json")))
    b = json.load(open(tmp_path / "straight" / "results.json"))
    assert a["final_loss"] == b["final_loss"]
    third = subprocess.run(args, cwd=ROOT, env=cpu_devices_env(1), capture_output=True, text=True, timeout=600)
    assert "nothing to do" in third.stdout


def test_job_that_cannot_fit_stops_before_compiling(tmp_path):
    proc = subprocess.run([sys.executable, *JOB, "--out", str(tmp_path / "x"), "--hbm-gib", "0.001"], cwd=ROOT,
                          env=cpu_devices_env(1), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: train 4 adapters") and "GiB" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "x" / "results.json")

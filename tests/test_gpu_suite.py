"""`bash benchmarks/gpu_suite.sh --smoke`: the GPU suite's code paths run on CPU (tiny presets) and write a report
with every section, so the suite cannot rot between the sessions that get an accelerator."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow(minutes=1.5)  # its time in a parallel run: runs first, longest first (tests/conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_suite_smoke(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path))
    proc = subprocess.run(["bash", "benchmarks/gpu_suite.sh", "--smoke"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.load(open(tmp_path / "gpu_suite.json"))
    assert report["smoke"] and report["environment"]["backend"] == "cpu"
    by_name = {s["name"]: s for s in report["sections"]}
    assert set(by_name) == {"decode", "inner-loop", "peer", "workloads", "backends"}
    for name, s in by_name.items():
        assert not s.get("error") and not s.get("cut"), (name, s)
        assert s["rows"] or s.get("skipped"), name
    inner = by_name["inner-loop"]["rows"]
    assert [r["adapters"] for r in inner] == [1, 2]
    assert all(r["seconds_per_self_edit_ragged"] > 0 and r["planned_bytes"] > 0 for r in inner)
    assert {r["batch"] for r in by_name["decode"]["rows"]} == {1, 2}
    timed = [r for r in by_name["backends"]["rows"] if "ms_per_step" in r]
    assert {(r["attention"], r["lora_backend"]) for r in timed} == {
        (a, lb) for a in ("einsum", "xla", "blockwise") for lb in ("tiled", "ragged_dot", "dense")}
    (best,) = [r for r in by_name["backends"]["rows"] if "fastest" in r]
    assert best["ms_per_step"] == min(r["ms_per_step"] for r in timed)
    md = open(tmp_path / "gpu_suite.md").read()
    assert "## inner-loop" in md and "seconds_per_self_edit_ragged" in md

"""Run directories: torn JSONL lines are set aside and redone, keys stay unique, one writer per directory, paths
compared resolved, and a directory without work takes a corrected configuration."""

import json
import os
import subprocess
import sys

import pytest

from seal_jax.runs import RunDir, RunDirError, append_jsonl, read_jsonl, resume_records, write_json


def test_torn_last_line_is_set_aside_and_redone(tmp_path, capsys):
    path = str(tmp_path / "evals.jsonl")
    work_calls = []

    def work(items):
        work_calls.extend(items)
        return [{"key": k, "v": k * 2} for k in items]

    resume_records(path, [1, 2, 3], key=lambda k: k, record_key="key", work=work, no_progress=True)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-7])  # a kill in the middle of the last record
    done = resume_records(path, [1, 2, 3], key=lambda k: k, record_key="key", work=work, no_progress=True)
    assert work_calls == [1, 2, 3, 3] and done[3] == {"key": 3, "v": 6}
    assert "torn" in capsys.readouterr().err and os.path.getsize(path + ".torn") > 0
    resume_records(path, [1, 2, 3], key=lambda k: k, record_key="key", work=work, no_progress=True)
    rows = [json.loads(line) for line in open(path)]
    assert sorted(r["key"] for r in rows) == [1, 2, 3] and work_calls == [1, 2, 3, 3]


def test_duplicates_dropped_on_read_refused_on_write(tmp_path):
    path = str(tmp_path / "x.jsonl")
    append_jsonl(path, [{"key": "a", "v": 1}, {"key": "a", "v": 2}, {"key": "b", "v": 3}])
    assert read_jsonl(path, key="key") == [{"key": "a", "v": 1}, {"key": "b", "v": 3}]
    with pytest.raises(ValueError, match="duplicate"):
        resume_records(path, ["c"], key=lambda k: k, record_key="key", no_progress=True,
                       work=lambda items: [{"key": "a"}])
    with open(path, "a") as f:
        f.write("not json\n{}\n")
    with pytest.raises(ValueError, match="line 4"):
        read_jsonl(path)


def test_one_writer_per_directory(tmp_path):
    run = str(tmp_path / "run")
    RunDir(run, {"a": 1})
    code = ("import sys; from seal_jax.runs import RunDir\n"
            f"RunDir({run!r}, {{'a': 1}})")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert other.returncode != 0
    err = other.stderr.strip().splitlines()[-1]
    assert err.startswith("error:") and f"pid {os.getpid()}" in err


def test_config_paths_resolved_and_workless_dir_takes_new_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs("data")
    run = RunDir("r", {"model": "./data", "lr": 1.0})
    run.close()
    RunDir("r", {"model": "data", "lr": 2.0}).close()  # no work yet: the corrected command is taken
    write_json(os.path.join("r", "results.json"), {})
    RunDir("./r", {"model": os.path.abspath("data"), "lr": 2.0}).close()  # same run, other spellings
    with pytest.raises(RunDirError, match="lr=2.0"):
        RunDir("r", {"model": "data", "lr": 3.0})

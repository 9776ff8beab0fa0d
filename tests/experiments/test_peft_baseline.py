"""experiments/peft_baseline.py, the transformers + PEFT peer, against seal_jax's own training and generation.

mode "same": the peer's trained adapters equal seal_jax's training of the same jobs (`inner_loop.build_plan` +
`train_adapters`, a K=1 adapter from `init_lora(cfg, lora_cfg, PRNGKey(init_seed))`) to float32 round-off, per-step
losses too, and its greedy answers (left-padded `generate` batches, stopping at eos) equal `seal_jax.generate`'s with
that adapter. mode "original": every example is an eos-padded compat_length row whose pads are in the loss
(compat_length - 1 targets per row), and a one-example job (so the Trainer's shuffle cannot matter) trains the adapter
seal_jax's loss_mode="compat_padding" trains, with the same losses.
"""

import dataclasses

import jax
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

import seal_jax  # noqa: E402
from experiments import peft_baseline as pb  # noqa: E402
from seal_jax import inner_loop as il  # noqa: E402
from seal_jax.lora import LoraConfig, init_lora  # noqa: E402
from tests.conftest import scaled_model  # noqa: E402

LORA = LoraConfig(rank=4, alpha=8.0, targets=("q", "v"))
NEW = 8
THREADS = 1  # tiny matmuls: one torch thread is fastest, and immune to OpenMP spin-waits on a shared CPU host


@pytest.fixture(scope="module")
def model():
    return scaled_model(seal_jax.get_preset("tiny-qwen2"), seed=1, scale=3.0)


def _ours(model, job: pb.PeerJob, **plan_kw):
    """seal_jax's own training of one job: (state, K=1 initial lora)."""
    lora = init_lora(model.config, LORA, jax.random.PRNGKey(job.init_seed))
    lora1 = jax.tree.map(lambda w: w[None], lora)  # the same initial adapter as a batch of one
    plan = il.build_plan([job.examples], job.spec, **plan_kw)
    state = il.train_adapters(model, lora1, plan)
    assert int(state.step[0]) == int(plan.total_steps[0]) and not bool(state.failed[0])
    return state, lora1, plan


def _assert_same_adapter(theirs, state, init, atol=1e-5):
    for t in LORA.targets:
        for ab in ("a", "b"):
            ours, start = np.asarray(state.lora.weights[t][ab][0]), np.asarray(init.weights[t][ab][0])
            other = np.asarray(theirs.weights[t][ab])
            assert np.abs(ours - start).max() > 100 * atol, (t, ab, "the weights hardly moved")
            np.testing.assert_allclose(other, ours, atol=atol, rtol=0, err_msg=f"{t}.{ab}")


def _jobs(vocab):
    rng = np.random.default_rng(3)
    ex = lambda lo, hi: il.Example(tuple(rng.integers(3, vocab, rng.integers(lo, hi)).tolist()))
    qs = lambda n: [rng.integers(3, vocab, rng.integers(4, 12)).tolist() for _ in range(n)]  # ragged: left padding
    return [
        pb.PeerJob([ex(6, 20) for _ in range(5)], il.TrainSpec(learning_rate=3e-3, schedule="linear", warmup_steps=1,
                                                                 epochs=2, batch_size=2, weight_decay=0.01, seed=4),
                   init_seed=7, questions=qs(3)),
        pb.PeerJob([ex(4, 30) for _ in range(3)], il.TrainSpec(learning_rate=2e-3, schedule="cosine", epochs=2,
                                                                 batch_size=1, max_grad_norm=0.5, seed=9),
                   init_seed=2, questions=qs(2)),
    ]


def test_same_mode_equals_seal_jax_training_and_generation(model):
    jobs = _jobs(model.config.vocab_size)
    ours = [_ours(model, job) for job in jobs]
    # eos: a token the trained model really emits mid-answer (so stopping at eos is exercised), chosen from our side
    free = seal_jax.generate(model, jobs[0].questions, max_new_tokens=NEW, lora=ours[0][0].lora.adapter(0))
    eos = free[0][3]

    r = pb.run_peer(model, jobs, "same", LORA, pad_id=0, eos_id=eos, answer_max_tokens=NEW, return_adapters=True,
                    num_threads=THREADS)
    assert r["n_jobs"] == 2 and r["mode"] == "same"
    for job, rec, (state, init, plan) in zip(jobs, r["jobs"], ours):
        total = int(plan.total_steps[0])
        assert rec["steps"] == total
        np.testing.assert_allclose(rec["losses"], np.asarray(state.losses[0, :total]), rtol=1e-5)
        _assert_same_adapter(rec["lora"], state, init)
        want = seal_jax.generate(model, job.questions, max_new_tokens=NEW, lora=state.lora.adapter(0),
                                 stop_token_ids=[eos])
        assert rec["answers"] == want
        assert rec["real_tokens"] == sum(len(job.examples[i].tokens) for s in il.batch_schedule(len(job.examples),
                                                                                               job.spec) for i in s)
        assert rec["padded_tokens"] >= rec["real_tokens"]
        for key in ("train_s", "train_cpu_s", "answer_s", "answer_cpu_s", "total_s", "total_cpu_s"):
            assert rec[key] >= 0.0
    assert r["answers"][0][0] == free[0][:free[0].index(eos)]  # stopped at the first eos (excluded)
    assert len(r["answers"][0][0]) < NEW
    assert r["seconds_per_self_edit"] == pytest.approx(r["total_s"] / 2)


def test_original_mode_trains_the_pads(model):
    eos = model.config.eos_token_ids[0]
    rng = np.random.default_rng(5)
    one = il.Example(tuple(rng.integers(3, model.config.vocab_size, 24).tolist()))
    three = [il.Example(tuple(rng.integers(3, model.config.vocab_size, n).tolist())) for n in (10, 17, 30)]
    q = [[5, 6, 7, 8], [9, 10, 11]]
    jobs = [pb.PeerJob([one], il.TrainSpec(learning_rate=2e-3, epochs=3, seed=1), init_seed=3, questions=q),
            pb.PeerJob(three, il.TrainSpec(learning_rate=1e-3, epochs=2, seed=2), init_seed=4, questions=q)]

    feats = pb.original_features(one, eos, 2048)
    assert len(feats["input_ids"]) == 2048 and feats["labels"] == feats["input_ids"]
    assert sum(feats["attention_mask"]) == 24 and feats["input_ids"][24:] == [eos] * 2024

    r = pb.run_peer(model, jobs, "original", LORA, pad_id=eos, eos_id=eos, answer_max_tokens=NEW,
                    return_adapters=True, num_threads=THREADS)
    a, b = r["jobs"]
    assert (a["steps"], b["steps"]) == (3, 6)
    assert a["target_tokens"] == 3 * 2047 and b["target_tokens"] == 6 * 2047  # compat_length - 1 per row
    assert a["padded_tokens"] == 3 * 2048 and b["real_tokens"] == 2 * (10 + 17 + 30)
    assert all(len(x) <= NEW for x in r["answers"][1])

    # one example: the Trainer's shuffle cannot matter, so the job is exactly seal_jax's compat_padding training
    state, init, plan = _ours(model, jobs[0], loss_mode="compat_padding", pad_id=eos, compat_length=2048)
    np.testing.assert_allclose(a["losses"], np.asarray(state.losses[0, :3]), rtol=1e-5)
    _assert_same_adapter(a["lora"], state, init)
    # ... and that loss is not the real-token loss ("all"): the pads are in it
    state_all, _, _ = _ours(model, dataclasses.replace(jobs[0]))
    assert abs(float(state_all.losses[0, 0]) - a["losses"][0]) > 0.1 * abs(a["losses"][0])


def test_cli_prints_one_json_line(capsys):
    pb.main(["--preset", "tiny-qwen2", "--jobs", "1", "--examples", "2", "--seq-len", "8", "--epochs", "1",
             "--questions", "2", "--prompt-len", "4", "--new-tokens", "3", "--lora-rank", "4", "--no-warmup",
             "--json"])
    import json
    lines = [x for x in capsys.readouterr().out.splitlines() if x.strip()]
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert out["mode"] == "same" and out["n_jobs"] == 1 and out["steps"] == 2 and out["real_tokens"] == 16


def test_jobs_match_the_benchmark_work():
    from experiments.bench_inner_loop import make_work
    cfg = seal_jax.get_preset("tiny-qwen2")
    spec = il.TrainSpec(max_steps=3)
    datasets, prompts = make_work(cfg, 3, 2, 2, 8, 4)
    jobs = pb.make_jobs(cfg, 3, 2, 2, 8, 4, spec)
    assert [list(j.examples) for j in jobs] == datasets and [j.questions for j in jobs] == prompts
    lora = init_lora(cfg, LORA, jax.random.PRNGKey(0), num_adapters=3)
    got = pb.jobs_from_work(datasets, prompts, spec, lora)[2].initial_lora(cfg, LORA)
    np.testing.assert_array_equal(np.asarray(got.weights["q"]["a"]), np.asarray(lora.weights["q"]["a"][2]))
    seeded = jobs[1].initial_lora(cfg, LORA)  # without a lora: the engine's init from the job's seed
    want = init_lora(cfg, LORA, jax.random.PRNGKey(1))
    np.testing.assert_array_equal(np.asarray(seeded.weights["v"]["a"]), np.asarray(want.weights["v"]["a"]))

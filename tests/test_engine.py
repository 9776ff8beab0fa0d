"""The ragged engine: every streamed adapter equals training it alone; a diverging adapter is isolated; the dry
planner counts exactly the work `run` does; one compiled program per shape bucket."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seal_jax
from seal_jax import engine as eng
from seal_jax import inner_loop as il
from seal_jax.lora import LoraConfig, init_lora, stack_adapters

pytestmark = pytest.mark.slow(minutes=2.5)  # its time in a parallel run: runs first, longest first (tests/conftest.py)

LORA = LoraConfig(rank=4, alpha=8.0, targets=("q", "v", "down"))


@pytest.fixture(scope="module")
def model():
    return seal_jax.init_model(seal_jax.get_preset("tiny-qwen2"), seed=0)


def _examples(rng, n, lo=6, hi=30, prompt=False):
    out = []
    for _ in range(n):
        toks = rng.integers(3, 512, rng.integers(lo, hi)).tolist()
        if prompt:  # completion-only loss: the first three quarters are a prompt
            p = 3 * len(toks) // 4
            out.append(il.Example.from_prompt_completion(toks[:p], toks[p:]))
        else:
            out.append(il.Example(tuple(toks)))
    return out


def _alone(model, job: eng.Job, loss_mode="all", compat_length=2048):
    """The same job on the padded layout, K = 1: a different code path (vmapped, rows padded)."""
    lora = stack_adapters([init_lora(model.config, LORA, jax.random.PRNGKey(job.init_seed))])
    plan = il.build_plan([job.examples], [job.spec], loss_mode=loss_mode, compat_length=compat_length)
    return il.train_adapters(model, lora, plan)


def _assert_equal_alone(model, done: eng.Finished, loss_mode="all", compat_length=2048, tol=1e-5):
    ref = _alone(model, done.job, loss_mode, compat_length)
    n = int(ref.step[0])
    assert done.steps == n == done.total_steps
    for a, b in zip(jax.tree.leaves(done.lora.weights), jax.tree.leaves(ref.lora.weights)):
        assert np.abs(np.asarray(a) - np.asarray(b[0])).max() < tol
    np.testing.assert_allclose(done.losses, np.asarray(ref.losses[0, :n]), rtol=1e-5)
    np.testing.assert_allclose(done.grad_norms, np.asarray(ref.grad_norms[0, :n]), rtol=1e-4)


def test_streamed_adapters_equal_alone(model):
    """Six heterogeneous jobs through three slots (three join mid-stage), two of them clipped on most steps."""
    rng = np.random.default_rng(0)
    specs = [il.TrainSpec(learning_rate=1e-3, schedule="linear", epochs=3, seed=1),
             il.TrainSpec(learning_rate=3e-3, schedule="cosine", warmup_steps=2, epochs=2, batch_size=2, seed=2),
             il.TrainSpec(learning_rate=5e-4, schedule="constant", max_steps=7, seed=3, max_grad_norm=0.05),
             il.TrainSpec(learning_rate=2e-3, schedule="linear", epochs=1, weight_decay=0.1, seed=4),
             il.TrainSpec(learning_rate=2e-3, schedule="linear", epochs=2, batch_size=3, seed=5, max_grad_norm=0.1),
             il.TrainSpec(learning_rate=2e-3, epochs=4, seed=6)]
    sizes = [3, 5, 2, 4, 6, 1]
    jobs = [eng.Job(_examples(rng, n, hi=40 if i == 1 else 30), sp, init_seed=10 + i)
            for i, (n, sp) in enumerate(zip(sizes, specs))]
    e = eng.Engine(model, LORA, eng.EngineConfig(slots=3, max_tokens_per_step=64, steps_per_call=4))
    out = {d.index: d for d in e.run(jobs)}
    assert sorted(out) == list(range(6)) and not any(d.failed for d in out.values())
    for d in out.values():
        _assert_equal_alone(model, d)
    clipped = np.asarray(out[2].grad_norms) > 0.05
    assert clipped.mean() > 0.5  # the clip of job 2 takes effect
    assert e.stats["real_tokens"] == sum(d.real_tokens for d in out.values())


@pytest.mark.parametrize("loss_mode", ["completion", "compat_padding"])
def test_loss_masks_equal_alone(model, loss_mode):
    rng = np.random.default_rng(1)
    jobs = [eng.Job(_examples(rng, n, prompt=True), il.TrainSpec(epochs=2, batch_size=b, seed=i), init_seed=i)
            for i, (n, b) in enumerate([(3, 1), (4, 2), (2, 2)])]
    compat = 48  # the original pads every sequence to 2048; a short length keeps the test fast
    e = eng.Engine(model, LORA, eng.EngineConfig(slots=2, max_tokens_per_step=128, loss_mode=loss_mode,
                                                 compat_length=compat))
    for d in e.run(jobs):
        _assert_equal_alone(model, d, loss_mode, compat)
    # completion: under half the positions carry loss, so only those are projected onto the vocabulary
    assert any(c > 0 for _, _, c in e.stats["shapes"]) == (loss_mode == "completion")


def test_trailing_pads_equal_alone_and_compat_padding(model):
    """Examples with trailing pads (each dataset padded to its longest, pads in the loss: the original ARC trainer)
    equal training alone; with every token trained they equal compat_padding at the padded length."""
    rng = np.random.default_rng(3)
    jobs = []
    for i, (n, b) in enumerate([(3, 1), (4, 2), (2, 2)]):
        exs = _examples(rng, n, prompt=True)
        longest = max(len(e.tokens) for e in exs)
        jobs.append(eng.Job([dataclasses.replace(e, pads=longest - len(e.tokens)) for e in exs],
                            il.TrainSpec(epochs=2, batch_size=b, seed=i), init_seed=i))
    e = eng.Engine(model, LORA, eng.EngineConfig(slots=2, max_tokens_per_step=128, loss_mode="completion"))
    done = list(e.run(jobs))
    for d in done:
        _assert_equal_alone(model, d, "completion")
    # pads are not real tokens: each job's real tokens are its batches' own tokens
    for d in done:
        j = d.job
        assert d.real_tokens == sum(len(j.examples[i].tokens) for b in il.batch_schedule(len(j.examples), j.spec)
                                    for i in b)
    L = 40
    flat = [eng.Job([il.Example(e.tokens, pads=L - len(e.tokens)) for e in jobs[0].examples], jobs[0].spec, 0)]
    plain = [eng.Job([il.Example(e.tokens) for e in jobs[0].examples], jobs[0].spec, 0)]
    (a,) = eng.Engine(model, LORA, eng.EngineConfig(slots=1, max_tokens_per_step=128)).run(flat)
    (c,) = eng.Engine(model, LORA, eng.EngineConfig(slots=1, max_tokens_per_step=128, loss_mode="compat_padding",
                                                    compat_length=L)).run(plain)
    np.testing.assert_allclose(a.losses, c.losses, rtol=1e-6)
    for x, y in zip(jax.tree.leaves(a.lora.weights), jax.tree.leaves(c.lora.weights)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)


def test_diverging_adapter_is_isolated(model, monkeypatch):
    """Slot 1's adapter is nan from the start: it is marked failed at its first step; the others, packed in the same
    rows, equal training alone."""
    rng = np.random.default_rng(2)
    jobs = [eng.Job(_examples(rng, 3), il.TrainSpec(epochs=2, seed=i), init_seed=100 + i) for i in range(3)]
    fresh = eng._fresh

    def poisoned(cfg, lcfg, seed):
        w = fresh(cfg, lcfg, seed)
        return jax.tree.map(lambda x: jnp.where(seed == 101, jnp.nan, x), w)

    jax.clear_caches()
    monkeypatch.setattr(eng, "_fresh", poisoned)
    try:
        e = eng.Engine(model, LORA, eng.EngineConfig(slots=3, max_tokens_per_step=4096))
        out = {d.index: d for d in e.run(jobs)}
    finally:
        jax.clear_caches()
    assert out[1].failed and out[1].steps == 0 and "non-finite" in out[1].failure
    rows = e.stats["global_steps"]
    assert e.stats["shapes"] and rows > 0
    for i in (0, 2):
        assert not out[i].failed
        _assert_equal_alone(model, out[i])


def test_plan_counts_what_run_does_and_empty_jobs(model):
    rng = np.random.default_rng(3)
    jobs = [eng.Job(_examples(rng, n), il.TrainSpec(epochs=e, seed=i), init_seed=i)
            for i, (n, e) in enumerate([(4, 2), (0, 3), (3, 0), (6, 1), (2, 3)])]
    cfg = eng.EngineConfig(slots=2, max_tokens_per_step=96, steps_per_call=3)
    planned = eng.Engine(model, LORA, cfg).plan(jobs)
    e = eng.Engine(model, LORA, cfg)
    out = list(e.run(jobs))
    assert [d.index for d in out] == planned["finish_order"]
    for key in ("token_slots", "real_tokens", "global_steps", "calls", "shapes"):
        assert e.stats[key] == planned[key], key
    empty = {d.index: d for d in out if d.steps == 0}
    assert sorted(empty) == [1, 2]  # no examples; zero epochs: the fresh adapter (B = 0: the base model)
    ref = init_lora(model.config, LORA, jax.random.PRNGKey(2))
    for a, b in zip(jax.tree.leaves(empty[2].lora.weights), jax.tree.leaves(ref.weights)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert e.stats["real_tokens"] == sum(min(len(j.examples[i].tokens), cfg.max_length) for j in jobs
                                         for b in il.batch_schedule(len(j.examples), j.spec) for i in b)


def test_group_bound_is_each_calls_own():
    """The static group count of a call follows its own rows (the tiled LoRA backend does work for every group): a
    draining one-row call of a 64-slot bank carries at most one group per token, not the widest call's bound."""
    assert eng.group_bound(64, 1, 128, 32) == 64 + 2 * 128  # the widest call of 4096 tokens in rows of 32
    assert eng.group_bound(64, 1, 1, 32) == 32  # one row: never more groups than tokens
    assert eng.group_bound(3, 2, 2, 64) == 16  # 3 x 2 sequences + 2 x 2 padding runs = 10, rounded up to 8s
    rng = np.random.default_rng(5)
    jobs = [eng.Job(_examples(rng, n, lo=6, hi=14), il.TrainSpec(epochs=e, seed=i), init_seed=i)
            for i, (n, e) in enumerate([(8, 2)] + [(3, 1)] * 12)]
    sched = eng._Scheduler(eng.EngineConfig(slots=8, max_tokens_per_step=1024, steps_per_call=2), jobs)
    rows = set()
    while (call := sched.next_call()) is not None:
        for st in call.steps:
            assert st["group_ids"].shape == st["group_sizes"].shape == (1, eng.group_bound(8, 1, call.R, call.T))
        rows.add(call.R)
        sched.after_call()
    assert min(rows) == 1 and max(rows) > 1, rows  # calls of different widths, each with its own bound


def test_stream_holds_no_more_slots_than_jobs(model):
    """A stream of n < slots jobs holds n slots (every resident slot costs AdamW and LoRA work each step), and its
    adapters are those of the same jobs in a stream that holds exactly n."""
    rng = np.random.default_rng(6)
    jobs = [eng.Job(_examples(rng, 3), il.TrainSpec(epochs=2, seed=i), init_seed=i) for i in range(3)]
    cfg = eng.EngineConfig(slots=64, max_tokens_per_step=256, steps_per_call=2)
    assert [eng.stream_slots(cfg, n) for n in (0, 1, 3, 64, 65)] == [1, 1, 3, 64, 64]
    for n in (1, 3):
        sched = eng._Scheduler(cfg, jobs[:n])
        call = sched.next_call()
        assert sched.K == len(sched.slots) == len(call.reset) == len(call.hp["learning_rate"]) == n
        assert {st["stepping"].shape for st in call.steps} == {(1, n)}  # [shards, K]
    wide = sorted(eng.Engine(model, LORA, cfg).run(jobs), key=lambda d: d.index)
    exact = sorted(eng.Engine(model, LORA, dataclasses.replace(cfg, slots=3)).run(jobs), key=lambda d: d.index)
    for a, b in zip(wide, exact):
        np.testing.assert_allclose(a.losses, b.losses, rtol=1e-6)
        for x, y in zip(jax.tree.leaves(a.lora.weights), jax.tree.leaves(b.lora.weights)):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7)


def test_one_program_per_shape_bucket(model):
    """Each distinct (rows, row length) shape is compiled once, however many calls, jobs and streams use it."""
    rng = np.random.default_rng(4)
    cfg = eng.EngineConfig(slots=4, max_tokens_per_step=128, steps_per_call=4)
    lcfg = LoraConfig(rank=2, alpha=4.0, targets=("q", "v"))  # a LoRA shape no other test uses
    make = lambda: [eng.Job(_examples(rng, n, lo=20, hi=30), il.TrainSpec(epochs=2, seed=int(n)), init_seed=int(n))
                    for n in rng.integers(2, 6, 6)]
    before = eng.TRACE_COUNTS["run_call"]
    e1 = eng.Engine(model, lcfg, cfg)
    list(e1.run(make()))
    first = eng.TRACE_COUNTS["run_call"] - before
    assert first == len(e1.stats["shapes"])
    e2 = eng.Engine(model, lcfg, cfg)
    list(e2.run(make()))
    assert len(e1.stats["shapes"]) >= 1 and e2.stats["calls"] > len(e2.stats["shapes"])  # calls reuse programs
    assert eng.TRACE_COUNTS["run_call"] - before == len(set(e1.stats["shapes"]) | set(e2.stats["shapes"]))


def test_blown_up_adapter_is_failed_not_handed_out_as_usable(model):
    """lr 1e30 stays finite in fp32 (the model normalises its activations) but the update is absurd: the adapter is
    failed with the reason, keeps its weights from before that step, and its neighbours are untouched."""
    rng = np.random.default_rng(5)
    jobs = [eng.Job(_examples(rng, 3), il.TrainSpec(learning_rate=lr, epochs=2, seed=i), init_seed=i)
            for i, lr in enumerate([1e-3, 1e30, 3e-3])]
    out = {d.index: d for d in eng.Engine(model, LORA, eng.EngineConfig(slots=3)).run(jobs)}
    assert out[1].failed and out[1].steps == 0 and "diverged" in out[1].failure
    ref = init_lora(model.config, LORA, jax.random.PRNGKey(1))
    for a, b in zip(jax.tree.leaves(out[1].lora.weights), jax.tree.leaves(ref.weights)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    for i in (0, 2):
        _assert_equal_alone(model, out[i])


@pytest.mark.parametrize("bad", [dict(learning_rate=float("nan")), dict(learning_rate=float("inf")),
                                 dict(max_grad_norm=float("nan")), dict(weight_decay=-1.0), dict(batch_size=0),
                                 dict(epochs=-1), dict(max_steps=-2)])
def test_train_spec_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="TrainSpec"):
        il.TrainSpec(**bad)


def _poison(monkeypatch, seeds):
    """Adapters initialised from these seeds are nan from the start (the engine's own init otherwise)."""
    fresh = eng._fresh

    def poisoned(cfg, lcfg, seed):
        w = fresh(cfg, lcfg, seed)
        bad = jnp.any(jnp.asarray(seed) == jnp.asarray(list(seeds)))
        return jax.tree.map(lambda x: jnp.where(bad, jnp.nan, x), w)

    jax.clear_caches()
    monkeypatch.setattr(eng, "_fresh", poisoned)


def _record_calls(monkeypatch):
    """Every `_run_call`'s host copy of its packed data (shard 0's [steps, ...]: one device), step count, resets and
    seeds (the arrays the device computes on)."""
    calls = []
    run = eng._run_call

    def spy(model, state, data, hp, reset, seeds, num_steps, **kw):
        calls.append(({k: np.asarray(v)[0] for k, v in data.items()}, int(num_steps), np.asarray(reset),
                      np.asarray(seeds)))
        return run(model, state, data, hp, reset, seeds, num_steps, **kw)

    monkeypatch.setattr(eng, "_run_call", spy)
    return calls


def _one_row_jobs():
    rng = np.random.default_rng(7)
    return [eng.Job(_examples(rng, 3, lo=6, hi=14), il.TrainSpec(epochs=2, seed=i), init_seed=200 + i)
            for i in range(3)]


ONE_ROW = eng.EngineConfig(slots=3, row_length=64, max_tokens_per_step=64, steps_per_call=8)


@pytest.mark.parametrize("lora_backend", ["tiled", "ragged_dot", "dense"])
def test_nan_adapter_fails_at_admission_beside_healthy_ones(model, monkeypatch, lora_backend):
    """Three jobs whose sequences share one 64-token row, job 1's adapter nan from its initialisation: it fails at
    admission (step 0, the reason says so) and its row neighbours equal training alone, with every LoRA backend
    (dense multiplies every token by every adapter's weights, ragged_dot's CPU expansion too)."""
    model = seal_jax.Model(model.config.replace(lora_backend=lora_backend), model.params)
    _poison(monkeypatch, [201])
    try:
        out = {d.index: d for d in eng.Engine(model, LORA, ONE_ROW).run(_one_row_jobs())}
    finally:
        jax.clear_caches()
    assert out[1].failed and out[1].steps == 0 and out[1].losses == [] and "non-finite" in out[1].failure
    for i in (0, 2):
        assert not out[i].failed
        _assert_equal_alone(model, out[i])


def test_adapter_going_nan_in_the_stream_leaves_its_row_neighbours_alone(model, monkeypatch):
    """The same row, with the admission check off so that job 1's nan adapter is in the stream, as an adapter whose
    values go non-finite during a step: it fails at its first step, and its row neighbours (whose first targets
    follow its last token, and whose rows keep holding its tokens for the rest of the call) equal training alone."""
    jobs = _one_row_jobs()
    _poison(monkeypatch, [201])
    monkeypatch.setattr(eng, "_finite_slots", lambda w: jnp.ones(jax.tree.leaves(w)[0].shape[0], bool))
    calls = _record_calls(monkeypatch)
    try:
        out = {d.index: d for d in eng.Engine(model, LORA, ONE_ROW).run(jobs)}
    finally:
        jax.clear_caches()
    data, n = calls[0][:2]
    assert data["tokens"].shape[1:] == (1, 64) and n > 1
    assert set(data["token_slot"][0].tolist()) == {-1, 0, 1, 2}  # one row holds all three slots' sequences
    assert all(1 in set(data["token_slot"][g].tolist()) for g in range(n))  # job 1's tokens were packed every step
    assert out[1].failed and out[1].steps == 0 and "non-finite" in out[1].failure
    for i in (0, 2):
        assert not out[i].failed
        _assert_equal_alone(model, out[i])


def test_slot_refilled_after_a_failure_starts_clean(model, monkeypatch):
    """Two slots, three jobs: job 0 fails at its first step, its slot takes job 2, which trains from a fresh LoRA,
    fresh AdamW state, step 0 and no failure flag (equal to training alone)."""
    rng = np.random.default_rng(8)
    jobs = [eng.Job(_examples(rng, 3, lo=6, hi=14), il.TrainSpec(epochs=2, seed=i, learning_rate=3e-3),
                    init_seed=300 + i) for i in range(3)]
    _poison(monkeypatch, [300])
    calls = _record_calls(monkeypatch)
    try:
        e = eng.Engine(model, LORA, eng.EngineConfig(slots=2, row_length=64, max_tokens_per_step=64,
                                                     steps_per_call=2))
        out = {d.index: d for d in e.run(jobs)}
    finally:
        jax.clear_caches()
    assert out[0].failed and out[0].steps == 0
    # job 2 (seed 302) entered slot 0, job 0's, at the start of the second call, and trained there
    assert calls[1][2].tolist() == [True, False] and int(calls[1][3][0]) == 302
    assert 0 in set(calls[1][0]["token_slot"][0].tolist())
    for i in (1, 2):
        assert not out[i].failed
        _assert_equal_alone(model, out[i])


def test_token_accounting_recomputed_from_the_packed_arrays(model, monkeypatch):
    """token_slots = every computed position of every step (all rows, used or not); real_tokens = the jobs' own
    tokens of every optimiser step (pads of Example.pads excluded), recomputed here from the jobs and the packed
    arrays the device received, not from the engine's counters."""
    rng = np.random.default_rng(9)
    jobs = []
    for i, (n, epochs) in enumerate([(4, 2), (2, 3), (5, 1), (3, 2)]):
        exs = [dataclasses.replace(x, pads=int(rng.integers(0, 5))) for x in _examples(rng, n, lo=6, hi=20)]
        jobs.append(eng.Job(exs, il.TrainSpec(epochs=epochs, batch_size=1 + i % 2, seed=i), init_seed=i))
    calls = _record_calls(monkeypatch)
    e = eng.Engine(model, LORA, eng.EngineConfig(slots=2, max_tokens_per_step=128, steps_per_call=3))
    out = list(e.run(jobs))
    assert len(out) == 4
    calls = [c[:2] for c in calls]
    slots = sum(n * d["tokens"].shape[1] * d["tokens"].shape[2] for d, n in calls)
    own = sum(len(j.examples[i].tokens) for j in jobs for b in il.batch_schedule(len(j.examples), j.spec)
              for i in b)
    pads = sum(j.examples[i].pads for j in jobs for b in il.batch_schedule(len(j.examples), j.spec) for i in b)
    packed = sum(int((d["segment_ids"][:n] > 0).sum()) for d, n in calls)  # own tokens + their trailing pads
    assert pads > 0 and packed == own + pads
    empty_rows = sum(int((d["segment_ids"][:n].max(axis=-1) == 0).sum()) for d, n in calls)
    assert empty_rows > 0  # some step leaves a row unused: it still counts as computed token slots
    assert e.stats["token_slots"] == slots
    assert e.stats["real_tokens"] == own == sum(d.real_tokens for d in out)


def test_balance_longest_first_to_the_least_loaded_shard():
    # 50 -> shard 0; 30 (job 2) -> 1; 30 (job 3) -> 1 (30 < 50); 20 -> 0 (50 < 60); 10 -> 1 (60 < 70)
    assert eng.balance([10, 50, 30, 30, 20], 2) == [1, 0, 1, 1, 0]
    assert eng.balance([5, 5, 5], 1) == [0, 0, 0]
    assert eng.balance([7, 7, 7], 4) == [0, 1, 2]  # equal jobs: the earlier one first, to the lower shard


def test_sharded_rows_follow_the_sequences(model):
    """Four adapter shards of two short jobs each, one job with a 200-token sequence: a row of 256 tokens is more
    than a shard's step should hold, so rows are as long as each call's sequences need (the 256-token rows only
    while the long sequence is packed), and the stream computes fewer token slots than with 256-token rows."""
    from jax.sharding import AbstractMesh
    rng = np.random.default_rng(10)
    jobs = [eng.Job(_examples(rng, 4, lo=8, hi=24), il.TrainSpec(epochs=3, seed=i), init_seed=i) for i in range(8)]
    long_one = il.Example(tuple(rng.integers(3, 512, 200).tolist()))
    jobs[3] = dataclasses.replace(jobs[3], examples=list(jobs[3].examples) + [long_one])
    mesh = AbstractMesh((4, 1), ("adapter", "model"))
    cfg = eng.EngineConfig(slots=2, max_tokens_per_step=512, steps_per_call=4)
    fitted = eng.Engine(model, LORA, cfg, mesh=mesh).plan(jobs)
    fixed = eng.Engine(model, LORA, dataclasses.replace(cfg, row_length=256), mesh=mesh).plan(jobs)
    lengths = {t for _, t, _ in fitted["shapes"]}
    assert 256 in lengths and min(lengths) <= 32, fitted["shapes"]
    assert sum(n for (_, t, _), n in fitted["shapes"].items() if t == 256) == 3  # one call per epoch's long batch
    assert fitted["real_tokens"] == fixed["real_tokens"]
    assert fitted["token_slots"] < 0.5 * fixed["token_slots"], (fitted["token_slots"], fixed["token_slots"])
    assert fitted["shards"] == 4 and len(fitted["shard_busy_slots"]) == 4

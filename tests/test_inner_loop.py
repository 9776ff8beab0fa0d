"""The batched inner loop: K adapters together == each alone; schedules; masks; NaN isolation; packing."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seal_jax
from seal_jax import inner_loop as il
from seal_jax.lora import LoraConfig, init_lora, stack_adapters

pytestmark = pytest.mark.slow(minutes=1)  # its time in a parallel run: runs first, longest first (tests/conftest.py)


@pytest.fixture(scope="module")
def model():
    return seal_jax.init_model(seal_jax.get_preset("tiny-qwen2"), seed=0)


def _dataset(rng, n, lo=6, hi=30, vocab=512):
    return [il.Example(tuple(rng.integers(3, vocab, rng.integers(lo, hi)).tolist())) for _ in range(n)]


LORA = LoraConfig(rank=4, alpha=8.0, targets=("q", "v", "down"))


def _lora(model, k, seed=0):
    return init_lora(model.config, LORA, jax.random.PRNGKey(seed), num_adapters=k)


def test_batched_equals_alone(model):
    rng = np.random.default_rng(0)
    datasets = [_dataset(rng, 3), _dataset(rng, 5, hi=40), _dataset(rng, 2), _dataset(rng, 4)]
    specs = [il.TrainSpec(learning_rate=1e-3, schedule="linear", epochs=3, seed=1),
             il.TrainSpec(learning_rate=3e-3, schedule="cosine", warmup_steps=2, epochs=2, batch_size=2, seed=2),
             il.TrainSpec(learning_rate=5e-4, schedule="constant", max_steps=7, seed=3, max_grad_norm=0.2),
             il.TrainSpec(learning_rate=2e-3, schedule="linear", epochs=1, weight_decay=0.1, seed=4)]
    lora = _lora(model, 4)
    together = il.train_adapters(model, lora, il.build_plan(datasets, specs))
    assert list(np.asarray(together.step)) == [9, 6, 7, 4]
    # Clipping must be active, or a batched run that lost an adapter's clip would still equal the lone one.
    # Measured pre-clip norms: adapter 2 0.42-0.46 on all 7 steps (clip 0.2; the former 0.5 never bit), adapter 0
    # 0.30-1.11 (default clip 1.0 bites on 3 of 9). With adapter 2's clip replaced by 1.0 in the batched plan its
    # weights drift 2.5e-4 from the lone run's (> the 1e-5 below).
    gnorms = np.asarray(together.grad_norms)
    assert (gnorms[2, :7] > 0.2).mean() > 0.5, gnorms[2]
    assert (gnorms[0, :9] > 1.0).sum() >= 2, gnorms[0]
    for k in range(4):
        alone = il.train_adapters(model, stack_adapters([lora.adapter(k)]), il.build_plan([datasets[k]], [specs[k]]))
        for a, b in zip(jax.tree.leaves(together.lora.adapter(k).weights), jax.tree.leaves(alone.lora.weights)):
            assert np.abs(np.asarray(a) - np.asarray(b[0])).max() < 1e-5
        n = int(together.step[k])
        np.testing.assert_allclose(np.asarray(together.losses[k, :n]), np.asarray(alone.losses[0, :n]), rtol=1e-5)
        np.testing.assert_allclose(gnorms[k, :n], np.asarray(alone.grad_norms[0, :n]), rtol=1e-4)
    assert not np.asarray(together.failed).any()


def test_training_reduces_loss_and_changes_b(model):
    rng = np.random.default_rng(1)
    data = [_dataset(rng, 2, lo=8, hi=12)]
    cfg = LoraConfig(rank=16, alpha=32.0, targets=("q", "k", "v", "o", "gate", "up", "down"))
    lora = init_lora(model.config, cfg, jax.random.PRNGKey(0), num_adapters=1)
    st = il.train_adapters(model, lora, il.build_plan(data, il.TrainSpec(learning_rate=1e-2, epochs=15)))
    losses = np.asarray(st.losses[0, :30])
    assert losses[-2:].mean() < losses[:2].mean() - 0.5  # a 0.02-std random head caps how far it can fall
    assert float(jnp.abs(st.lora.weights["q"]["b"]).max()) > 0


def test_padding_adapters_do_not_change_real_ones(model):
    rng = np.random.default_rng(2)
    data = [_dataset(rng, 3), _dataset(rng, 2)]
    spec = il.TrainSpec(epochs=2)
    a = il.train_adapters(model, _lora(model, 2), il.build_plan(data, spec))
    b = il.train_adapters(model, stack_adapters([_lora(model, 2).adapter(0), _lora(model, 2).adapter(1)] +
                                                [_lora(model, 2).adapter(0)] * 2),
                          il.build_plan(data, spec, num_adapters=4))
    for x, y in zip(jax.tree.leaves(a.lora.weights), jax.tree.leaves(b.lora.weights)):
        assert np.abs(np.asarray(x) - np.asarray(y[:2])).max() < 1e-5
    assert list(np.asarray(b.step)) == [6, 4, 0, 0]


def test_nan_isolation(model):
    rng = np.random.default_rng(3)
    data = [_dataset(rng, 3) for _ in range(3)]
    spec = il.TrainSpec(epochs=2)
    lora = _lora(model, 3)
    clean = il.train_adapters(model, lora, il.build_plan(data, spec))
    bad_w = jax.tree.map(lambda w: w, lora.weights)
    bad_w["v"]["a"] = bad_w["v"]["a"].at[1, 0, 0, 0].set(jnp.nan)  # poison adapter 1 only
    bad = il.train_adapters(model, dataclasses.replace(lora, weights=bad_w), il.build_plan(data, spec))
    assert list(np.asarray(bad.failed)) == [False, True, False]
    assert int(bad.step[1]) == 0
    for k in (0, 2):
        for x, y in zip(jax.tree.leaves(clean.lora.adapter(k).weights), jax.tree.leaves(bad.lora.adapter(k).weights)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_schedules_match_hf_formulas():
    s = jnp.arange(10)
    lin = il.lr_at(s, 1.0, 1, 0, 10)
    np.testing.assert_allclose(np.asarray(lin), (10 - np.arange(10)) / 10, rtol=1e-6)
    cos = il.lr_at(s, 2.0, 2, 2, 10)
    exp = [0, 1.0] + [2 * 0.5 * (1 + np.cos(np.pi * (i - 2) / 8)) for i in range(2, 10)]
    np.testing.assert_allclose(np.asarray(cos), exp, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(il.lr_at(s, 3.0, 0, 0, 10)), 3.0)


def test_loss_modes_and_masks():
    ex = il.Example.from_prompt_completion([5, 6, 7], [8, 9])
    p = il.build_plan([[ex]], il.TrainSpec(epochs=1), loss_mode="completion")
    np.testing.assert_array_equal(p.weights[0, 0, :6], [0, 0, 0, 1, 1, 0])
    p = il.build_plan([[ex]], il.TrainSpec(epochs=1), loss_mode="all")
    np.testing.assert_array_equal(p.weights[0, 0, :6], [1, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(p.segment_ids[0, 0, :6], [1, 1, 1, 1, 1, 0])
    p = il.build_plan([[ex]], il.TrainSpec(epochs=1), loss_mode="compat_padding", pad_id=2, compat_length=32)
    assert p.tokens.shape[-1] == 32
    np.testing.assert_array_equal(p.tokens[0, 0, :7], [5, 6, 7, 8, 9, 2, 2])
    assert p.weights[0, 0].sum() == 32  # every label, pads included
    assert p.kv_segment_ids[0, 0].sum() == 5 and p.segment_ids[0, 0].sum() == 32


def test_example_pads_are_trained_but_not_attended_to():
    """Example.pads (the original ARC trainer's padding="longest"): trailing pad tokens in the loss whatever the
    mask, queries of their sequence but never attention keys; a fully-trained example padded to L is exactly the
    compat_padding layout at compat_length L."""
    ex = il.Example((5, 6, 7, 8, 9), (0, 0, 0, 1, 1), pads=3)
    p = il.build_plan([[ex]], il.TrainSpec(epochs=1), loss_mode="completion", pad_id=2)
    assert p.tokens.shape[-1] == 16  # the smallest length bucket; positions 8.. belong to no sequence
    np.testing.assert_array_equal(p.tokens[0, 0, :8], [5, 6, 7, 8, 9, 2, 2, 2])
    np.testing.assert_array_equal(p.weights[0, 0], [0, 0, 0, 1, 1, 1, 1, 1] + [0] * 8)
    np.testing.assert_array_equal(p.segment_ids[0, 0], [1] * 8 + [0] * 8)
    np.testing.assert_array_equal(p.kv_segment_ids[0, 0], [1] * 5 + [0] * 11)
    np.testing.assert_array_equal(p.positions[0, 0, :8], np.arange(8))
    a = il.build_plan([[il.Example((5, 6, 7, 8, 9), pads=27)]], il.TrainSpec(epochs=1), loss_mode="all", pad_id=2)
    b = il.build_plan([[il.Example((5, 6, 7, 8, 9))]], il.TrainSpec(epochs=1), loss_mode="compat_padding", pad_id=2,
                      compat_length=32)
    for name in ("tokens", "weights", "segment_ids", "kv_segment_ids", "positions"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_compat_padding_loss_matches_transformers(hf_tiny):
    """The unmasked-padding mode reproduces HF's loss on a padded example (labels = input_ids, pad keys masked)."""
    import torch
    family, hf_model, path = hf_tiny
    model = seal_jax.load_pretrained(path)
    toks = np.random.default_rng(4).integers(3, 500, 11).tolist()
    p = il.build_plan([[il.Example(tuple(toks))]], il.TrainSpec(epochs=1), loss_mode="compat_padding", pad_id=2,
                      compat_length=48)
    a = p.arrays()
    loss, _ = il.token_loss(model, None, a["tokens"][0], a["weights"][0], a["segment_ids"][0],
                            a["kv_segment_ids"][0], a["positions"][0], jnp.ones(a["tokens"].shape[1]))
    ids = torch.tensor([toks + [2] * 37])
    mask = torch.tensor([[1] * 11 + [0] * 37])
    with torch.no_grad():
        ref = hf_model(input_ids=ids, attention_mask=mask, labels=ids).loss.item()
    assert abs(float(loss) - ref) < 1e-4


def test_packing_matches_unpacked_loss(model):
    rng = np.random.default_rng(5)
    data = _dataset(rng, 4, lo=5, hi=12)
    unpacked = il.build_plan([data], il.TrainSpec(epochs=1, batch_size=4))
    packed = il.build_plan([data], il.TrainSpec(epochs=1, batch_size=4), pack=True, length_buckets=[64])
    assert packed.segment_ids[0, 0].max() == 4  # all four examples in one row
    ua, pa = unpacked.arrays(), packed.arrays()
    lu, nu = il.token_loss(model, None, ua["tokens"][0], ua["weights"][0], ua["segment_ids"][0],
                           ua["kv_segment_ids"][0], ua["positions"][0], jnp.ones(ua["tokens"].shape[1]))
    lp, npk = il.token_loss(model, None, pa["tokens"][0, :1], pa["weights"][0, :1], pa["segment_ids"][0, :1],
                            pa["kv_segment_ids"][0, :1], pa["positions"][0, :1], jnp.ones(1))
    assert float(nu) == float(npk)
    assert abs(float(lu) - float(lp)) < 1e-5


def test_shuffling_is_per_adapter_and_seeded():
    data = [[il.Example((1, 2, 3))] * 6, [il.Example((1, 2, 3))] * 6]
    a = il.build_plan(data, [il.TrainSpec(epochs=2, seed=7), il.TrainSpec(epochs=2, seed=8)])
    b = il.build_plan(data[:1], [il.TrainSpec(epochs=2, seed=7)])
    np.testing.assert_array_equal(a.batch_index[0, :12], b.batch_index[0, :12])
    assert not np.array_equal(a.batch_index[0, :6], a.batch_index[0, 6:12])  # reshuffled each epoch
    assert not np.array_equal(a.batch_index[0], a.batch_index[1])


def _bf16_ulp(x):
    """Spacing of bfloat16 numbers (8 significant bits) at |x|."""
    x = np.abs(np.asarray(x, np.float32))
    return 2.0 ** (np.floor(np.log2(np.maximum(x, 1e-30))) - 7)


def test_fp32_adapters_over_bf16_base():
    """fp32 adapters trained over a bf16 base follow the same adapters trained over the fp32 copy of that base.

    The learning rate (2e-5) is small enough that ~93-96% of the A updates are below half a bf16 spacing of A's
    initial value, so adapters stored (or updated) in bf16 would round most of their updates away.
    Measured (bf16 base vs its exact fp32 copy): losses within 6.3e-5 relative (loss ~6.2); the weight updates
    dw = w_final - w_init within 0.4-11% relative (L2) per leaf (down.a worst: Adam normalises the tiny, partly
    sign-flipping A gradients of the first steps, where B is still ~0). Rounding the adapters to bf16 after every step
    instead gives 89-98% relative error on every A leaf.
    """
    model = seal_jax.init_model(seal_jax.get_preset("tiny-llama"), seed=0, dtype="bfloat16")
    model32 = seal_jax.Model(model.config, jax.tree.map(lambda x: x.astype(jnp.float32), model.params))
    rng = np.random.default_rng(6)
    lora = init_lora(model.config, LORA, jax.random.PRNGKey(0), num_adapters=2)
    plan = il.build_plan([_dataset(rng, 2), _dataset(rng, 3)], il.TrainSpec(epochs=2, learning_rate=2e-5))
    st = il.train_adapters(model, lora, plan)
    ref = il.train_adapters(model32, lora, plan)
    assert all(w.dtype == jnp.float32 for w in jax.tree.leaves(st.lora.weights))
    assert model.params["embedding"].dtype == jnp.bfloat16
    assert list(np.asarray(st.step)) == [4, 6] and not np.asarray(st.failed).any()

    losses, ref_losses = np.asarray(st.losses), np.asarray(ref.losses)
    assert np.isfinite(losses[0, :4]).all() and np.isfinite(losses[1, :6]).all()
    np.testing.assert_allclose(losses, ref_losses, rtol=3e-4)  # ~5x the measured 6.3e-5
    for t in LORA.targets:
        for ab in ("a", "b"):
            w0 = np.asarray(lora.weights[t][ab])
            dw, dw_ref = np.asarray(st.lora.weights[t][ab]) - w0, np.asarray(ref.lora.weights[t][ab]) - w0
            rel = np.linalg.norm(dw - dw_ref) / np.linalg.norm(dw_ref)
            assert rel < 0.3, (t, ab, rel)  # ~3x the worst measured 0.11; bf16-stored adapters: 0.89-0.98 on A
            if ab == "a":
                assert (np.abs(dw_ref) < _bf16_ulp(w0) / 2).mean() > 0.8, (t, "updates not below bf16 resolution")
                assert (dw != 0).mean() > 0.99, (t, "A updates rounded away")

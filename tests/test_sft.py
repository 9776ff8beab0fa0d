"""SFT (grain + orbax): completion-only loss learns, and a killed run resumes mid-epoch to the same result."""

import jax
import numpy as np

import seal_jax
from seal_jax import sft
from seal_jax.lora import LoraConfig


def _rows(seed=0, n=7):
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(3, 500, rng.integers(4, 10)).tolist() for _ in range(n)]
    completions = [rng.integers(3, 500, rng.integers(3, 8)).tolist() for _ in range(n)]
    return prompts, completions


CFG = sft.SFTConfig(lora=LoraConfig(rank=4, alpha=8.0, targets=("q", "v", "up")), learning_rate=5e-3, epochs=3,
                    batch_size=3, seed=1)


def test_sft_reduces_loss_and_merges():
    model = seal_jax.init_model(seal_jax.get_preset("tiny-qwen2"), seed=0)
    prompts, completions = _rows()
    lora, losses = sft.train_sft(model, prompts, completions, eos_id=2, cfg=CFG)
    assert len(losses) == 7 and np.isfinite(losses).all()  # ceil(7 * 3 / 3)
    assert np.mean(losses[-2:]) < np.mean(losses[:2])
    merged = sft.merge(model, lora)
    tokens = np.asarray([prompts[0] + completions[0]])
    np.testing.assert_allclose(np.asarray(seal_jax.forward(merged, tokens)),
                               np.asarray(seal_jax.forward(model, tokens, lora=lora)), atol=1e-4)


def test_killed_sft_resumes_mid_epoch(tmp_path):
    model = seal_jax.init_model(seal_jax.get_preset("tiny-llama"), seed=0)
    prompts, completions = _rows(1)
    full, full_losses = sft.train_sft(model, prompts, completions, eos_id=2, cfg=CFG)
    total = len(full_losses)  # ceil(7 * 3 / 3) = 7
    ckpt = str(tmp_path / "sft")
    first_steps, resumed_steps = [], []
    sft.train_sft(model, prompts, completions, eos_id=2, cfg=CFG, checkpoint_dir=ckpt, stop_after=3,
                  log=lambda step, loss: first_steps.append(step))  # killed after 3 steps
    assert first_steps == [0, 1, 2]
    resumed, losses = sft.train_sft(model, prompts, completions, eos_id=2, cfg=CFG, checkpoint_dir=ckpt,
                                    log=lambda step, loss: resumed_steps.append((step, loss)))
    # The resumed call must start at the saved step and run only the remaining ones (training is deterministic, so a
    # restart from step 0 would reproduce the same losses and weights: only the step log tells the two apart).
    assert [s for s, _ in resumed_steps] == list(range(3, total))
    np.testing.assert_allclose([l for _, l in resumed_steps], full_losses[3:], rtol=1e-6)
    np.testing.assert_allclose(losses, full_losses, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(full.weights), jax.tree.leaves(resumed.weights)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-7)


def test_pad_to_longest_rows_train_on_eos_pads_without_attending_to_them():
    """The original ARC behaviour cloning: rows right-padded with eos to the set's longest, pads in the loss."""
    import dataclasses
    cfg = dataclasses.replace(sft.SFTConfig(), pad_to_longest=True)
    rows = sft._rows([[5, 6], [7, 8, 9, 10]], [[11], [12, 13]], 2, cfg, 16)
    np.testing.assert_array_equal(rows["tokens"][:, :8], [[5, 6, 11, 2, 2, 2, 2, 0], [7, 8, 9, 10, 12, 13, 2, 0]])
    np.testing.assert_array_equal(rows["weights"][:, :8], [[0, 0, 1, 1, 1, 1, 1, 0], [0, 0, 0, 0, 1, 1, 1, 0]])
    np.testing.assert_array_equal(rows["segment_ids"][:, :8], [[1] * 7 + [0]] * 2)
    np.testing.assert_array_equal(rows["kv_segment_ids"][:, :8], [[1] * 4 + [0] * 4, [1] * 7 + [0]])
    plain = sft._rows([[5, 6], [7, 8, 9, 10]], [[11], [12, 13]], 2, sft.SFTConfig(), 16)
    np.testing.assert_array_equal(plain["weights"][0, :8], [0, 0, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(plain["kv_segment_ids"], plain["segment_ids"])

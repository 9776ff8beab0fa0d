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
    ckpt = str(tmp_path / "sft")
    sft.train_sft(model, prompts, completions, eos_id=2, cfg=CFG, checkpoint_dir=ckpt, stop_after=3)  # killed
    resumed, losses = sft.train_sft(model, prompts, completions, eos_id=2, cfg=CFG, checkpoint_dir=ckpt)
    np.testing.assert_allclose(losses, full_losses, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(full.weights), jax.tree.leaves(resumed.weights)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-7)

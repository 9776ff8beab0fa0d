"""Exact parity with transformers on tiny random models (fp32, >= 256 tokens so rotary bugs cannot hide)."""

import numpy as np
import pytest
import torch

import seal_jax
from seal_jax.models.rope import inv_frequencies

T = 288


def _hf_logits(hf_model, tokens, attention_mask=None, position_ids=None):
    with torch.no_grad():
        out = hf_model(input_ids=torch.tensor(tokens), attention_mask=None if attention_mask is None
                       else torch.tensor(attention_mask), position_ids=None if position_ids is None
                       else torch.tensor(position_ids))
    return out.logits.float().numpy()


def test_rope_frequencies_match_transformers(hf_tiny):
    family, hf_model, path = hf_tiny
    model = seal_jax.load_pretrained(path)
    ours = inv_frequencies(model.config)
    theirs = hf_model.model.rotary_emb.inv_freq.numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    if family == "llama":  # scaling must actually change some frequencies in this test config
        assert not np.allclose(ours, inv_frequencies(model.config.replace(rope_scaling=None)))


def test_logits_match_transformers(hf_tiny):
    family, hf_model, path = hf_tiny
    model = seal_jax.load_pretrained(path, dtype="float32")
    assert model.config.family == family
    assert model.config.qkv_bias == (family == "qwen2")
    assert model.config.tie_word_embeddings == (family == "llama")
    tokens = np.random.default_rng(0).integers(0, model.config.vocab_size, (3, T)).astype(np.int32)
    ours = np.asarray(seal_jax.forward(model, tokens))
    theirs = _hf_logits(hf_model, tokens)
    assert ours.shape == theirs.shape == (3, T, model.config.vocab_size)
    assert np.abs(ours - theirs).max() < 1e-4


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_rows_match_transformers(hf_tiny, side):
    """Rows padded to a common length (segment id 0 = pad) give each row's unpadded logits."""
    family, hf_model, path = hf_tiny
    model = seal_jax.load_pretrained(path)
    rng = np.random.default_rng(1)
    lengths = [T, T - 37, 260]
    tokens = np.zeros((3, T), np.int32)
    seg = np.zeros((3, T), np.int32)
    pos = np.zeros((3, T), np.int32)
    for i, n in enumerate(lengths):
        sl = slice(0, n) if side == "right" else slice(T - n, T)
        tokens[i, sl] = rng.integers(3, model.config.vocab_size, n)
        seg[i, sl] = 1
        pos[i, sl] = np.arange(n)
    ours = np.asarray(seal_jax.forward(model, tokens, positions=pos, segment_ids=seg))
    assert np.isfinite(ours).all()
    for i, n in enumerate(lengths):
        sl = slice(0, n) if side == "right" else slice(T - n, T)
        theirs = _hf_logits(hf_model, tokens[i:i + 1, sl])[0]
        assert np.abs(ours[i, sl] - theirs).max() < 1e-4


def test_packed_segments_match_separate_sequences(hf_tiny):
    """Two sequences packed in one row with segment ids and restarted positions == each run alone."""
    family, hf_model, path = hf_tiny
    model = seal_jax.load_pretrained(path)
    rng = np.random.default_rng(2)
    a = rng.integers(3, model.config.vocab_size, 150).astype(np.int32)
    b = rng.integers(3, model.config.vocab_size, 130).astype(np.int32)
    tokens = np.concatenate([a, b])[None]
    seg = np.concatenate([np.full(150, 1), np.full(130, 2)])[None]
    pos = np.concatenate([np.arange(150), np.arange(130)])[None]
    ours = np.asarray(seal_jax.forward(model, tokens, positions=pos, segment_ids=seg))[0]
    assert np.abs(ours[:150] - _hf_logits(hf_model, a[None])[0]).max() < 1e-4
    assert np.abs(ours[150:] - _hf_logits(hf_model, b[None])[0]).max() < 1e-4

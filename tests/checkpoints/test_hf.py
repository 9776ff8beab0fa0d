"""HF checkpoint I/O: sharded loading, save -> transformers round trip, and one-line errors."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

import seal_jax
from seal_jax.checkpoints.hf import CheckpointError, to_hf_tensors


def _tokens(vocab, shape=(2, 40), seed=0):
    return np.random.default_rng(seed).integers(0, vocab, shape).astype(np.int32)


def test_weights_are_bit_equal_after_conversion(hf_tiny):
    family, hf_model, path = hf_tiny
    model = seal_jax.load_pretrained(path)
    q = hf_model.model.layers[1].self_attn.q_proj.weight.detach().numpy()  # [H*Dh, D]
    ours = np.asarray(model.params["layers"]["attn"]["q"]["kernel"][1])  # [D, H, Dh]
    np.testing.assert_array_equal(ours.reshape(ours.shape[0], -1).T, q)
    # every HF tensor is reproduced exactly by the inverse map
    state = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
    for name, value in to_hf_tensors(model).items():
        np.testing.assert_array_equal(value, state[name])


def test_sharded_checkpoint_loads(hf_tiny, tmp_path):
    family, hf_model, path = hf_tiny
    sharded = str(tmp_path / "sharded")
    hf_model.save_pretrained(sharded, max_shard_size="50KB")
    assert os.path.exists(os.path.join(sharded, "model.safetensors.index.json"))
    a = seal_jax.load_pretrained(path)
    b = seal_jax.load_pretrained(sharded)
    tokens = _tokens(a.config.vocab_size)
    np.testing.assert_array_equal(np.asarray(seal_jax.forward(a, tokens)), np.asarray(seal_jax.forward(b, tokens)))


@pytest.mark.parametrize("shard_bytes", [None, 60_000])
def test_save_pretrained_reloads_in_transformers(hf_tiny, tmp_path, shard_bytes):
    from transformers import AutoModelForCausalLM
    family, hf_model, path = hf_tiny
    model = seal_jax.load_pretrained(path)
    out = str(tmp_path / "saved")
    seal_jax.save_pretrained(model, out, max_shard_bytes=shard_bytes)
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokens = _tokens(model.config.vocab_size, (2, 64))
    with torch.no_grad():
        theirs = reloaded(torch.tensor(tokens)).logits.numpy()
    ours = np.asarray(seal_jax.forward(model, tokens))
    assert np.abs(ours - theirs).max() < 1e-5
    again = seal_jax.load_pretrained(out)
    assert again.config == model.config


def test_bfloat16_load_and_save(hf_tiny, tmp_path):
    import jax.numpy as jnp
    import ml_dtypes
    family, hf_model, path = hf_tiny
    model = seal_jax.load_pretrained(path, dtype="bfloat16")
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(model.params))
    tokens = _tokens(model.config.vocab_size)
    logits = seal_jax.forward(model, tokens)
    assert logits.dtype == jnp.float32
    ref = np.asarray(seal_jax.forward(seal_jax.load_pretrained(path), tokens))
    # measured: 0.0168 (qwen2), 0.0140 (llama) against logits of magnitude ~2; non-zero: the weights are bf16
    assert 0 < np.abs(np.asarray(logits) - ref).max() < 0.025
    out = tmp_path / "bf16"
    seal_jax.save_pretrained(model, str(out))
    assert json.load(open(out / "config.json"))["torch_dtype"] == "bfloat16"
    # the saved tensors are the checkpoint's, rounded to bf16 (the layouts only move values), every one of them
    saved = load_file(str(out / "model.safetensors"))
    state = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight")
    assert set(saved) == set(state)
    for name, value in saved.items():
        assert value.dtype == ml_dtypes.bfloat16, name
        np.testing.assert_array_equal(value, state[name].astype(ml_dtypes.bfloat16), err_msg=name)


def test_load_with_target_sharding(hf_tiny):
    """Loaded straight onto a real (adapter=2, model=4) mesh of 8 devices: every leaf carries exactly the rules' spec,
    its shards have the split shapes, and the values are the unsharded load's."""
    from tests.test_sharding import TINY_QWEN2_SPECS_2x4, run_on_8_devices
    family, hf_model, path = hf_tiny
    leaves = run_on_8_devices("load", path)
    cfg = seal_jax.load_pretrained(path).config
    want = {k: v for k, v in TINY_QWEN2_SPECS_2x4.items()
            if not (k.endswith("/bias") and not cfg.qkv_bias) and not (k == "lm_head" and cfg.tie_word_embeddings)}
    assert {k: leaf["spec"] for k, leaf in leaves.items()} == want
    L, D, H, K, Dh, F, V = 2, 64, 4, 2, 16, 128, 512  # tests.conftest.tiny_hf_config
    assert leaves["layers/attn/q/kernel"]["shard"] == [L, D, H // 4, Dh]
    assert leaves["layers/attn/k/kernel"]["shard"] == [L, D, K, Dh]  # replicated: 2 kv heads on a 4-way axis
    assert leaves["layers/mlp/down/kernel"]["shard"] == [L, F // 4, D]
    assert leaves["embedding"]["shard"] == [V // 4, D]
    assert all(leaf["devices"] == 8 and leaf["equal"] for leaf in leaves.values())


# ------------------------------------------------------------------ errors: one line, naming the problem
def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_weights(path, fn):
    f = os.path.join(path, "model.safetensors")
    tensors = load_file(f)
    fn(tensors)
    save_file(tensors, f, metadata={"format": "pt"})


def _one_line(excinfo):
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(CheckpointError) as e:
        seal_jax.load_pretrained(str(tmp_path / "nope"))
    assert "not found" in _one_line(e)
    with pytest.raises(CheckpointError) as e:
        seal_jax.load_pretrained(str(tmp_path))
    assert "no config.json" in _one_line(e)


def test_missing_weights_file(hf_tiny, tmp_path):
    path = _copy(hf_tiny[2], str(tmp_path / "c"))
    os.remove(os.path.join(path, "model.safetensors"))
    with pytest.raises(CheckpointError) as e:
        seal_jax.load_pretrained(path)
    assert "no model.safetensors" in _one_line(e)


def test_unsupported_architecture(hf_tiny, tmp_path):
    path = _copy(hf_tiny[2], str(tmp_path / "c"))
    cfg = json.load(open(os.path.join(path, "config.json")))
    cfg["architectures"] = ["MistralForCausalLM"]
    cfg["model_type"] = "mistral"
    json.dump(cfg, open(os.path.join(path, "config.json"), "w"))
    with pytest.raises(CheckpointError) as e:
        seal_jax.load_pretrained(path)
    assert "unsupported architecture 'MistralForCausalLM'" in _one_line(e)


def test_missing_tensor(hf_tiny, tmp_path):
    path = _copy(hf_tiny[2], str(tmp_path / "c"))
    _edit_weights(path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError) as e:
        seal_jax.load_pretrained(path)
    assert "missing tensor model.layers.1.mlp.up_proj.weight" in _one_line(e)


def test_shape_mismatch(hf_tiny, tmp_path):
    path = _copy(hf_tiny[2], str(tmp_path / "c"))
    _edit_weights(path, lambda t: t.update({"model.norm.weight": np.ones(7, np.float32)}))
    with pytest.raises(CheckpointError) as e:
        seal_jax.load_pretrained(path)
    assert "model.norm.weight has shape (7,), expected (64,)" in _one_line(e)


def test_unknown_tensor(hf_tiny, tmp_path):
    path = _copy(hf_tiny[2], str(tmp_path / "c"))
    _edit_weights(path, lambda t: t.update({"model.extra_head.weight": np.ones(3, np.float32)}))
    with pytest.raises(CheckpointError) as e:
        seal_jax.load_pretrained(path)
    assert "unknown tensor model.extra_head.weight" in _one_line(e)


def test_broken_index(hf_tiny, tmp_path):
    family, hf_model, _ = hf_tiny
    path = str(tmp_path / "s")
    hf_model.save_pretrained(path, max_shard_size="50KB")
    shards = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    os.remove(os.path.join(path, shards[-1]))
    with pytest.raises(CheckpointError) as e:
        seal_jax.load_pretrained(path)
    assert shards[-1] in _one_line(e)

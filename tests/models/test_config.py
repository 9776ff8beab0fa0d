"""Configs from both config.json layouts, presets with the real shapes, and clear errors."""

import pytest

from seal_jax.models.config import PRESETS, ConfigError, ModelConfig, RopeScaling, get_preset

# The rope-related parts of the real hub files (Qwen/Qwen2.5-7B and meta-llama/Llama-3.2-1B config.json).
QWEN25_7B_HUB = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584,
    "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
    "rope_theta": 1000000.0, "rms_norm_eps": 1e-06, "tie_word_embeddings": False, "max_position_embeddings": 131072,
    "use_sliding_window": False, "sliding_window": 131072, "hidden_act": "silu", "bos_token_id": 151643,
    "eos_token_id": 151643,
}
LLAMA32_1B_HUB = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256, "hidden_size": 2048,
    "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 64, "rope_theta": 500000.0, "rms_norm_eps": 1e-05, "tie_word_embeddings": True,
    "max_position_embeddings": 131072, "hidden_act": "silu", "bos_token_id": 128000, "eos_token_id": 128001,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
}


def test_hub_layout_matches_presets():
    assert ModelConfig.from_hf(QWEN25_7B_HUB) == get_preset("qwen2.5-7b")
    assert ModelConfig.from_hf(LLAMA32_1B_HUB) == get_preset("llama-3.2-1b")


def test_transformers5_layout():
    hf = dict(LLAMA32_1B_HUB)
    scaling = hf.pop("rope_scaling")
    theta = hf.pop("rope_theta")
    hf["rope_parameters"] = dict(scaling, rope_theta=theta)
    assert ModelConfig.from_hf(hf) == get_preset("llama-3.2-1b")
    q = dict(QWEN25_7B_HUB)
    q["rope_parameters"] = {"rope_type": "default", "rope_theta": q.pop("rope_theta")}
    assert ModelConfig.from_hf(q) == get_preset("qwen2.5-7b")


def test_to_hf_round_trip():
    for name, cfg in PRESETS.items():
        assert ModelConfig.from_hf(cfg.to_hf()) == cfg, name


def test_parameter_counts_of_real_shapes():
    assert abs(get_preset("qwen2.5-7b").num_params() - 7.62e9) < 0.01e9
    assert abs(get_preset("llama-3.2-1b").num_params() - 1.236e9) < 0.005e9


def test_rope_scaling_parsed():
    assert get_preset("llama-3.2-1b").rope_scaling == RopeScaling(32.0, 1.0, 4.0, 8192)
    assert get_preset("qwen2.5-7b").rope_scaling is None


@pytest.mark.parametrize("patch, msg", [
    ({"architectures": ["GPT2LMHeadModel"]}, "unsupported architecture 'GPT2LMHeadModel'"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "unsupported rope scaling type 'yarn'"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"num_key_value_heads": 5}, "not a multiple"),
])
def test_bad_configs(patch, msg):
    hf = dict(QWEN25_7B_HUB, **patch)
    with pytest.raises(ConfigError, match=msg):
        ModelConfig.from_hf(hf)


def test_missing_field_and_unknown_preset():
    hf = dict(QWEN25_7B_HUB)
    del hf["hidden_size"]
    with pytest.raises(ConfigError, match="missing required field 'hidden_size'"):
        ModelConfig.from_hf(hf)
    with pytest.raises(ConfigError, match="unknown preset 'gpt-5'"):
        get_preset("gpt-5")

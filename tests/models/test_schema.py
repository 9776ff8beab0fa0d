"""The parameter schema is the one description of the parameters: init, the HF key map, the sharding rules, LoRA shapes
and PEFT names all follow one table edit."""

import json
import os

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

import seal_jax
from seal_jax.checkpoints.peft import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE
from seal_jax.lora import LoraConfig, init_lora, merge
from seal_jax.models import schema
from seal_jax.models.model import abstract_params
from seal_jax.sharding import make_mesh, param_shardings

# A dummy MLP projection [D, F], LoRA-able, as HF would name a Linear "mlp.extra_proj".
EXTRA = schema.ParamSpec("layers/mlp/extra/kernel", ("D", "F"), ("embed", "mlp"), "normal", "mlp.extra_proj.weight",
                         "linear", lora="extra")


@pytest.fixture
def extra_row(monkeypatch):
    monkeypatch.setattr(schema, "PARAMS", schema.PARAMS + (EXTRA,))


def _leaves(tree):
    return {"/".join(str(k.key) for k in p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("preset", ["tiny-qwen2", "tiny-llama"])
def test_linen_params_are_the_schema(preset):
    """The module creates exactly the schema's rows, in their shapes and inits; the derived counts agree."""
    cfg = seal_jax.get_preset(preset)
    params = _leaves(seal_jax.init_model(cfg, seed=0).params)
    assert {k: v.shape for k, v in params.items()} == schema.param_shapes(cfg)
    assert {k: s.shape for k, s in _leaves(abstract_params(cfg)).items()} == schema.param_shapes(cfg)
    assert cfg.num_params() == sum(v.size for v in params.values())
    for s in schema.specs(cfg):
        v = np.asarray(params[s.path])
        if s.init == "ones":
            assert (v == 1).all(), s.path
        elif s.init == "zeros":
            assert (v == 0).all(), s.path
        else:
            assert 0.015 < v.std() < 0.025, s.path
    assert set(schema.param_axes()) == {s.path for s in schema.PARAMS}
    assert schema.lora_targets() == ("q", "k", "v", "o", "gate", "up", "down")


def test_adding_a_parameter_is_one_table_edit(extra_row, tmp_path):
    cfg = seal_jax.get_preset("tiny-qwen2")
    L, D, F, r = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size, 4

    # init (and the abstract tree, the parameter count)
    model = seal_jax.init_model(cfg, seed=0)
    extra = np.asarray(model.params["layers"]["mlp"]["extra"]["kernel"])
    assert extra.shape == (L, D, F) and 0.015 < extra.std() < 0.025
    assert abstract_params(cfg)["layers"]["mlp"]["extra"]["kernel"].shape == (L, D, F)
    assert cfg.num_params() == sum(v.size for v in jax.tree.leaves(model.params))
    tokens = np.arange(12, dtype=np.int32).reshape(2, 6)
    assert np.isfinite(np.asarray(seal_jax.forward(model, tokens))).all()  # an unused row does not disturb apply

    # HF save / load: the tensor is written in HF's [out, in] layout under its name, and read back
    seal_jax.save_pretrained(model, str(tmp_path / "hf"))
    saved = load_file(str(tmp_path / "hf" / "model.safetensors"))
    for i in range(L):
        np.testing.assert_array_equal(saved[f"model.layers.{i}.mlp.extra_proj.weight"], extra[i].T)
    again = seal_jax.load_pretrained(str(tmp_path / "hf"))
    np.testing.assert_array_equal(np.asarray(again.params["layers"]["mlp"]["extra"]["kernel"]), extra)

    # sharding rules: its logical axes ("layers", "embed", "mlp") -> the MLP hidden on "model"
    spec = param_shardings(cfg, make_mesh(1, 1))["layers"]["mlp"]["extra"]["kernel"].spec
    assert spec == jax.sharding.PartitionSpec(None, None, "model")

    # LoRA and PEFT naming: a target named "extra" on module mlp.extra_proj, flat [D, F]
    assert schema.lora_shapes(cfg)["extra"] == (D, F)
    assert schema.peft_modules()["extra"] == "mlp.extra_proj"
    lora = init_lora(cfg, LoraConfig(rank=r, alpha=8.0, targets=("q", "extra")), jax.random.PRNGKey(0))
    assert lora.weights["extra"]["a"].shape == (L, D, r) and lora.weights["extra"]["b"].shape == (L, r, F)
    lora = jax.tree.map(lambda w: w + 0.01, lora)
    seal_jax.save_adapter(lora, str(tmp_path / "peft"), model)
    config = json.load(open(os.path.join(tmp_path, "peft", ADAPTER_CONFIG_FILE)))
    assert config["target_modules"] == ["extra_proj", "q_proj"]
    tensors = load_file(os.path.join(tmp_path, "peft", ADAPTER_WEIGHTS_FILE))
    a0 = tensors["base_model.model.model.layers.0.mlp.extra_proj.lora_A.weight"]
    np.testing.assert_array_equal(a0, np.asarray(lora.weights["extra"]["a"][0]).T)
    back = seal_jax.load_adapter(str(tmp_path / "peft"), model)
    assert back.config.targets == ("q", "extra")
    np.testing.assert_array_equal(np.asarray(back.weights["extra"]["b"]), np.asarray(lora.weights["extra"]["b"]))
    merged = merge(model, back).params["layers"]["mlp"]["extra"]["kernel"]
    delta = back.config.scale * np.einsum("lir,lro->lio", back.weights["extra"]["a"], back.weights["extra"]["b"])
    np.testing.assert_allclose(np.asarray(merged), extra + delta, rtol=0, atol=1e-6)


def test_a_malformed_row_is_refused():
    with pytest.raises(ValueError, match="unknown shape letter"):
        schema.ParamSpec("layers/x/kernel", ("D", "Q"), ("embed", "mlp"), "normal", "x.weight", "linear")
    with pytest.raises(ValueError, match="LoRA target must be a HF Linear weight"):
        schema.ParamSpec("layers/x/bias", ("D",), ("embed",), "zeros", "x.bias", "copy", lora="x")

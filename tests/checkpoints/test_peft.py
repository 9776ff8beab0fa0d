"""PEFT LoRA adapters: parity with PEFT's forward, save -> PEFT round trip, merge, rsLoRA, and one-line errors."""

import copy
import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

import seal_jax
from seal_jax.checkpoints.hf import CheckpointError
from seal_jax.lora import Lora, LoraConfig, merge, stack_adapters

QV = ("q_proj", "v_proj")
ALL7 = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TOL = 1e-4


def _tokens(vocab, shape=(2, 128), seed=0):
    return np.random.default_rng(seed).integers(0, vocab, shape).astype(np.int32)


def _peft_model(hf_model, targets, r=8, alpha=16, **kw):
    """A PEFT LoRA model over a *copy* of `hf_model` (get_peft_model mutates its base), with B != 0."""
    import peft
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False, **kw)
    pm = peft.get_peft_model(copy.deepcopy(hf_model), cfg).eval()
    # init_lora_weights=False leaves B at kaiming-uniform (~0.3); shrink so the adapter is a modest perturbation.
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.mul_(0.1)
    return pm


def _logits(torch_model, tokens):
    with torch.no_grad():
        return torch_model(torch.tensor(tokens, dtype=torch.long)).logits.float().numpy()


def _maxdiff(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


@dataclasses.dataclass
class Case:
    family: str
    hf_model: object  # clean base (never wrapped)
    peft_dir: str  # adapter saved by PEFT
    model: seal_jax.Model
    tokens: np.ndarray
    ref: np.ndarray  # PEFT logits
    targets: tuple


@pytest.fixture(scope="module", params=[QV, ALL7], ids=["qv", "all7"])
def case(request, hf_tiny, tmp_path_factory):
    family, hf_model, path = hf_tiny
    targets = request.param
    pm = _peft_model(hf_model, targets)
    peft_dir = str(tmp_path_factory.mktemp(f"peft_{family}_{len(targets)}"))
    pm.save_pretrained(peft_dir)
    model = seal_jax.load_pretrained(path)
    tokens = _tokens(model.config.vocab_size)
    return Case(family, hf_model, peft_dir, model, tokens, _logits(pm, tokens), targets)


# ---------------------------------------------------------------------------------------------------- parity


def test_peft_saved_adapter_matches_peft_forward(case):
    lora = seal_jax.load_adapter(case.peft_dir, case.model)
    assert lora.config.rank == 8 and lora.config.alpha == 16.0 and lora.config.scale == 2.0
    assert [seal_jax.models.schema.peft_modules()[t].split(".")[-1] for t in lora.config.targets] == \
        [t for t in ALL7 if t in case.targets]
    assert all(float(np.abs(np.asarray(w["b"])).max()) > 0 for w in lora.weights.values())
    ours = np.asarray(seal_jax.forward(case.model, case.tokens, lora=lora))
    base = np.asarray(seal_jax.forward(case.model, case.tokens))
    assert _maxdiff(base, case.ref) > 100 * TOL  # the adapter really changes the logits
    assert _maxdiff(ours, case.ref) < TOL


def test_our_saved_adapter_loads_in_peft(case, tmp_path):
    from peft import PeftModel
    lora = seal_jax.load_adapter(case.peft_dir, case.model)
    out = str(tmp_path / "ours")
    seal_jax.save_adapter(lora, out, case.model, base_model_name_or_path="tiny-base")
    cfg = json.load(open(os.path.join(out, "adapter_config.json")))
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM" and cfg["r"] == 8
    assert cfg["lora_alpha"] == 16 and sorted(cfg["target_modules"]) == sorted(case.targets)
    assert cfg["base_model_name_or_path"] == "tiny-base"
    # the same tensors, under the same names, as PEFT's own file
    theirs, ours = load_file(os.path.join(case.peft_dir, "adapter_model.safetensors")), \
        load_file(os.path.join(out, "adapter_model.safetensors"))
    assert set(theirs) == set(ours)
    for k in theirs:
        np.testing.assert_array_equal(theirs[k], ours[k])
    reloaded = PeftModel.from_pretrained(copy.deepcopy(case.hf_model), out).eval()
    assert _maxdiff(_logits(reloaded, case.tokens), case.ref) < TOL
    again = seal_jax.load_adapter(out, case.model)
    assert again.config == lora.config


def test_merged_equals_unmerged_and_reloads_in_transformers(case, tmp_path):
    from transformers import AutoModelForCausalLM
    lora = seal_jax.load_adapter(case.peft_dir, case.model)
    merged = merge(case.model, lora)
    ours = np.asarray(seal_jax.forward(case.model, case.tokens, lora=lora))
    assert _maxdiff(seal_jax.forward(merged, case.tokens), ours) < TOL
    out = str(tmp_path / "merged")
    seal_jax.save_pretrained(merged, out)
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert _maxdiff(_logits(hf, case.tokens), case.ref) < TOL


def test_rslora_round_trip(hf_tiny, tmp_path):
    from peft import PeftModel
    family, hf_model, path = hf_tiny
    pm = _peft_model(hf_model, QV, use_rslora=True)
    pm.save_pretrained(str(tmp_path / "peft"))
    model = seal_jax.load_pretrained(path)
    tokens = _tokens(model.config.vocab_size)
    ref = _logits(pm, tokens)
    lora = seal_jax.load_adapter(str(tmp_path / "peft"), model)
    assert lora.config.use_rslora and lora.config.scale == pytest.approx(16 / np.sqrt(8))
    assert _maxdiff(seal_jax.forward(model, tokens, lora=lora), ref) < TOL
    out = str(tmp_path / "ours")
    seal_jax.save_adapter(lora, out, model)
    assert json.load(open(os.path.join(out, "adapter_config.json")))["use_rslora"] is True
    assert seal_jax.load_adapter(out, model).config == lora.config
    reloaded = PeftModel.from_pretrained(copy.deepcopy(hf_model), out).eval()
    assert _maxdiff(_logits(reloaded, tokens), ref) < TOL


# ---------------------------------------------------------------------------------------------------- variants


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(model config, adapter, its dir) of a random q/v/down adapter (B != 0) saved by save_adapter (tiny qwen2)."""
    from seal_jax.models.schema import lora_shapes
    from tests.conftest import tiny_hf_config
    cfg = seal_jax.ModelConfig.from_hf(tiny_hf_config("qwen2").to_dict())
    rng, shapes, L, r = np.random.default_rng(0), lora_shapes(cfg), cfg.num_layers, 4
    weights = {n: {"a": rng.standard_normal((L, shapes[n][0], r), np.float32),
                   "b": rng.standard_normal((L, r, shapes[n][1]), np.float32)} for n in ("q", "v", "down")}
    lora = Lora(LoraConfig(rank=r, alpha=8.0, targets=("q", "v", "down")), weights)
    path = str(tmp_path_factory.mktemp("saved_adapter"))
    seal_jax.save_adapter(lora, path, cfg)
    return cfg, lora, path


def _copy(src, dst, config_edit=None, tensor_edit=None):
    shutil.copytree(src, dst)
    if config_edit:
        p = os.path.join(dst, "adapter_config.json")
        cfg = json.load(open(p))
        config_edit(cfg)
        json.dump(cfg, open(p, "w"))
    if tensor_edit:
        p = os.path.join(dst, "adapter_model.safetensors")
        t = load_file(p)
        tensor_edit(t)
        save_file(t, p)
    return dst


def _same(a: Lora, b: Lora):
    assert a.config == b.config
    for n in a.weights:
        for ab in ("a", "b"):
            np.testing.assert_array_equal(np.asarray(a.weights[n][ab]), np.asarray(b.weights[n][ab]))


def test_key_and_config_variants(saved, tmp_path):
    cfg, lora, path = saved
    _same(seal_jax.load_adapter(path, cfg), lora)

    # keys that keep the adapter name ("...lora_A.default.weight")
    def add_default(t):
        for k in list(t):
            t[k.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default.")] = t.pop(k)
    _same(seal_jax.load_adapter(_copy(path, str(tmp_path / "dflt"), tensor_edit=add_default), cfg), lora)

    # target_modules as a regex: targets come from the tensors present
    def regex(c):
        c["target_modules"] = r".*\.(q_proj|v_proj|down_proj|up_proj)"
    _same(seal_jax.load_adapter(_copy(path, str(tmp_path / "re"), regex), cfg), lora)

    # list entries with a longer dotted suffix, and an entry naming no module here (ignored, as in PEFT)
    def dotted(c):
        c["target_modules"] = ["self_attn.q_proj", "v_proj", "mlp.down_proj", "c_attn"]
    _same(seal_jax.load_adapter(_copy(path, str(tmp_path / "dot"), dotted), cfg), lora)

    # cast to bfloat16
    bf = seal_jax.load_adapter(path, cfg, dtype="bfloat16")
    assert bf.config.dtype == "bfloat16" and bf.weights["q"]["a"].dtype == np.dtype("bfloat16")

    # a batch cannot be saved
    with pytest.raises(CheckpointError, match=r"lora\.adapter\(k\)"):
        seal_jax.save_adapter(stack_adapters([lora, lora]), str(tmp_path / "batch"), cfg)


# ---------------------------------------------------------------------------------------------------- errors

KEY0 = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"


def _set(field, value):
    return lambda c: c.__setitem__(field, value)


def _drop(key):
    return lambda t: t.pop(key)


def _put(key, shape):
    return lambda t: t.__setitem__(key, np.zeros(shape, np.float32))


ERRORS = {
    "peft_type": (dict(config_edit=_set("peft_type", "IA3")), "peft_type='IA3'"),
    "bias": (dict(config_edit=_set("bias", "all")), "bias='all'"),
    "fan_in_fan_out": (dict(config_edit=_set("fan_in_fan_out", True)), "fan_in_fan_out"),
    "dora": (dict(config_edit=_set("use_dora", True)), "use_dora"),
    "layers_to_transform": (dict(config_edit=_set("layers_to_transform", [0])), "layers_to_transform"),
    "rank_pattern": (dict(config_edit=_set("rank_pattern", {"q_proj": 2})), "rank_pattern"),
    "alpha_pattern": (dict(config_edit=_set("alpha_pattern", {"q_proj": 2})), "alpha_pattern"),
    "modules_to_save": (dict(config_edit=_set("modules_to_save", ["lm_head"])), "modules_to_save"),
    "pissa": (dict(config_edit=_set("init_lora_weights", "pissa")), "init_lora_weights='pissa'"),
    "rank_vs_tensors": (dict(config_edit=_set("r", 8)), ("lora_A.weight has shape (4, ", "expected (8, ", "r=8")),
    "unknown_tensor": (dict(tensor_edit=_put("base_model.model.lm_head.lora_A.weight", (4, 64))),
                       "unknown tensor base_model.model.lm_head.lora_A.weight"),
    "beyond_layers": (dict(tensor_edit=_put(KEY0.replace("layers.0", "layers.7"), (4, 64))),
                      "layers.7.self_attn.q_proj.lora_A.weight is beyond num_hidden_layers=2"),
    "missing_tensor": (dict(tensor_edit=_drop("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight")),
                       "missing tensor base_model.model.model.layers.1.mlp.down_proj.lora_B.weight "
                       "(layer 1, mlp.down_proj)"),
    "shape": (dict(tensor_edit=_put(KEY0, (4, 63))), f"{KEY0} has shape (4, 63), expected (4, 64)"),
    "not_listed": (dict(config_edit=_set("target_modules", ["q_proj", "v_proj"])),
                   "mlp.down_proj.lora_A.weight is for a module that target_modules"),
    "layer_subset": (dict(config_edit=_set("target_modules", ["layers.0.self_attn.q_proj", "v_proj", "down_proj"])),
                     "self_attn.q_proj only in layers [0]"),
}


@pytest.mark.parametrize("kind", list(ERRORS))
def test_errors_are_one_line_and_name_the_problem(saved, tmp_path, kind):
    cfg, lora, path = saved
    edits, expected = ERRORS[kind]
    bad = _copy(path, str(tmp_path / kind), **edits)
    with pytest.raises(CheckpointError) as e:
        seal_jax.load_adapter(bad, cfg)
    msg = str(e.value)
    assert "\n" not in msg, msg
    for part in (expected,) if isinstance(expected, str) else expected:
        assert part in msg, msg


def test_missing_files_are_one_line_errors(saved, tmp_path):
    cfg, lora, path = saved
    cases = [(str(tmp_path / "nope"), "adapter directory not found"),
             (_copy(path, str(tmp_path / "nocfg")), "no adapter_config.json"),
             (_copy(path, str(tmp_path / "nowts")), "no adapter_model.safetensors")]
    os.remove(os.path.join(cases[1][0], "adapter_config.json"))
    os.remove(os.path.join(cases[2][0], "adapter_model.safetensors"))
    for bad, expected in cases:
        with pytest.raises(CheckpointError) as e:
            seal_jax.load_adapter(bad, cfg)
        assert "\n" not in str(e.value) and expected in str(e.value), str(e.value)

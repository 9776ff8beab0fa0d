"""The memory planner against what XLA reports for the compiled inner-loop step, and its refusal message."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seal_jax
from seal_jax import inner_loop as il
from seal_jax import planner
from seal_jax.lora import LoraConfig, init_lora


@pytest.mark.parametrize("preset, K, T, remat", [("tiny-qwen2", 4, 128, False), ("tiny-llama", 2, 256, True),
                                                  ("small-qwen2", 2, 128, False)])
def test_training_estimate_within_20_percent_of_xla(preset, K, T, remat):
    cfg = seal_jax.get_preset(preset).replace(remat=remat)
    model = seal_jax.init_model(cfg)
    rng = np.random.default_rng(0)
    data = [[il.Example(tuple(rng.integers(3, cfg.vocab_size, T).tolist())) for _ in range(4)] for _ in range(K)]
    plan = il.build_plan(data, il.TrainSpec(epochs=1))
    lcfg = LoraConfig(rank=8, alpha=16.0, targets=("q", "v"))
    state = il.init_state(init_lora(cfg, lcfg, jax.random.PRNGKey(0), K), plan)
    m = il._train_chunk.lower(model, state, plan.arrays(), jnp.int32(1)).compile().memory_analysis()
    xla = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
    est = planner.plan_training(cfg, lcfg, K, T, examples_per_adapter=4, dtype="float32").total
    print(f"{preset} K={K} T={T} remat={remat}: planner {est / 2**20:.2f} MiB, XLA {xla / 2**20:.2f} MiB")
    assert abs(est - xla) / xla < 0.20


def test_weights_follow_the_sharding_rules():
    cfg = seal_jax.get_preset("qwen2.5-7b")
    full = planner.weight_bytes(cfg, (1, 1), "bfloat16")
    assert abs(full - 2 * cfg.num_params()) < 1e6
    tp4 = planner.weight_bytes(cfg, (1, 4), "bfloat16")
    assert full / 4 < tp4 < full / 3  # 4 kv heads split 4 ways; everything big divides


def test_a_run_that_cannot_fit_says_what_to_change():
    cfg = seal_jax.get_preset("qwen2.5-7b")
    plan = planner.plan_training(cfg, LoraConfig(), 16, 2048, mesh=(1, 1))
    with pytest.raises(planner.MemoryPlanError) as e:
        planner.check_fits(plan, planner.device_memory("v5e"))
    msg = str(e.value)
    assert "\n" not in msg and "GiB" in msg and ("--mesh" in msg or "adapters" in msg)
    small = planner.plan_training(seal_jax.get_preset("llama-3.2-1b"), LoraConfig(), 1, 256, mesh=(1, 1))
    planner.check_fits(small, planner.device_memory("H100"))  # fits: no error


@pytest.mark.parametrize("preset, K, R, T, lora", [
    ("small-qwen2", 16, 4, 256, LoraConfig(rank=32, alpha=64.0, targets=("q", "v"))),
    ("small-llama", 8, 2, 512, LoraConfig(rank=64, alpha=16.0, targets=("q", "v", "gate", "up", "down"))),
    ("tiny-qwen2", 32, 8, 128, LoraConfig(rank=8, alpha=16.0, targets=("q", "v")))])
def test_engine_estimate_within_20_percent_of_xla(preset, K, R, T, lora):
    """The ragged engine's call (rematerialised), lowered from abstract arrays: nothing is allocated."""
    from seal_jax import engine
    from seal_jax.models.model import Model, abstract_params
    cfg = seal_jax.get_preset(preset).replace(remat=True, vocab_size=16384)
    model = Model(cfg, abstract_params(cfg, "float32"))
    m = engine.lower_call(model, lora, engine.EngineConfig(slots=K, max_tokens_per_step=R * T), R, T).memory_analysis()
    xla = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
    est = planner.plan_engine(cfg, lora, K, R, T, dtype="float32").total
    print(f"{preset} K={K} {R}x{T}: planner {est / 2**20:.2f} MiB, XLA {xla / 2**20:.2f} MiB")
    assert abs(est - xla) / xla < 0.20


def test_sharded_engine_estimate_within_20_percent_of_xla():
    """Per device on meshes (2, 2), (1, 4), (4, 1): XLA's analysis of the sharded call (tests/planner_mesh.py, on 4
    simulated CPU devices)."""
    import json
    import os
    import subprocess
    import sys
    from tests.conftest import cpu_devices_env
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "tests.planner_mesh"], cwd=root, env=cpu_devices_env(4),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(rows) == 4
    for r in rows:
        print(r)
        assert abs(r["planner"] - r["xla"]) / r["xla"] < 0.20, r


def test_engine_fits_says_the_most_slots_and_rows():
    cfg = seal_jax.get_preset("qwen2.5-7b").replace(remat=True)
    lora = LoraConfig(rank=32, alpha=64.0, targets=("q", "v"))
    budget = planner.device_memory("v5e")
    fit = planner.engine_fits(cfg, lora, budget, 64, 8, 512, mesh=(4, 4))
    usable = 0.9 * budget
    total = lambda k, r: planner.plan_engine(cfg, lora, k, r, 512, mesh=(4, 4)).total  # noqa: E731
    assert not fit["fits"] and 0 < fit["max_slots"] < 64 and fit["remat"]
    assert total(fit["max_slots"], 8) <= usable < total(fit["max_slots"] + 1, 8)
    assert fit["max_rows"] == 0 and total(64, 1) > usable  # 64 slots alone do not fit one v5e chip
    one = planner.engine_fits(cfg, lora, planner.device_memory("H100"), 64, 8, 512)
    assert one["fits"] and one["max_slots"] > 64 and one["max_rows"] > 8
    assert total(64, 8) < planner.plan_engine(cfg, lora, 64, 8, 512).total  # the model axis splits the weights


def test_engine_remat_where_it_pays():
    qwen7 = seal_jax.get_preset("qwen2.5-7b")
    assert planner.engine_remat(qwen7, 4096, budget_bytes=planner.device_memory("H100"))
    tiny = seal_jax.get_preset("tiny-qwen2").replace(vocab_size=152064)
    assert not planner.engine_remat(tiny, 4096, budget_bytes=16 * planner.GiB)


def test_fit_engine_memory_recovers_known_weights():
    """benchmarks/fit_engine_memory.py: rows made from known weights are fitted back exactly (zero worst error)."""
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).parents[1] / "benchmarks" / "fit_engine_memory.py"
    spec = importlib.util.spec_from_file_location("fit_engine_memory", path)
    fem = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fem)
    rng = np.random.default_rng(0)
    truth = {"state": 2.5, "layer": 4.0, "logits": 1.5, "tiles": 0.25, "scores": 1.0}
    rows = []
    for i in range(12):
        terms = {k: int(rng.integers(1, 10**8)) for k in truth}
        fixed = int(rng.integers(10**8, 10**9))
        rows.append({"real": i < 2, "fixed": fixed, "terms": terms,
                     "xla": fixed + sum(truth[k] * terms[k] for k in truth)})
    fitted = fem.fit(rows)
    assert fitted == pytest.approx(truth, abs=2e-3)
    assert max(abs(fem.error(r, fitted)) for r in rows) < 1e-3

"""Sharded == single-device on 8 simulated CPU devices, for meshes (8,1), (4,2), (2,4), (1,8), and the exact specs the
sharding rules give on a real (2, 4) mesh.

JAX fixes the device count when it starts, so these checks run in a fresh process with
XLA_FLAGS=--xla_force_host_platform_device_count=8.
"""

import json
import logging
import os
import subprocess
import sys

import jax
import pytest

import seal_jax
from seal_jax.sharding import logical_to_spec, make_mesh, mesh_context
from tests.conftest import assert_varied, cpu_devices_env

pytestmark = pytest.mark.slow(minutes=4)  # its time in a parallel run: runs first, longest first (tests/conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("preset", ["tiny-qwen2", "tiny-llama"])
def test_sharded_equals_single_device(preset):
    env = cpu_devices_env(8)
    proc = subprocess.run([sys.executable, "-m", "tests.sharded_equivalence", preset], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # "sharded greedy == single-device greedy" only means something if the greedy rows vary (8 new tokens per row)
    assert_varied(result.pop("reference_generation"), min_distinct=3)
    assert set(result) == {"(8, 1)", "(4, 2)", "(2, 4)", "(1, 8)"}
    for mesh, r in result.items():
        assert r["forward"] < 1e-5, (mesh, r)
        assert r["generate_equal"], (mesh, r)
        assert r["inner_loop"] < 1e-5, (mesh, r)
    assert "'model'" in result["(1, 8)"]["mlp_spec"]  # tensor-parallel: the MLP kernel is split over "model"
    assert result["(8, 1)"]["adapter_axis_sharded"]  # adapters spread over 8 devices


def test_sharded_engine_equals_single_device():
    """The ragged engine over each mesh: every adapter's LoRA weights and losses as on one device (1e-5), the same
    failures (a diverging job, a non-finite adapter) at the same steps, refills included (2 slots per shard for 14
    jobs), grouped-query attention with the kv heads split, replicated or both (tests/sharded_engine.py)."""
    proc = subprocess.run([sys.executable, "-m", "tests.sharded_engine"], cwd=ROOT, env=cpu_devices_env(8),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    ref = result.pop("reference")
    assert ref["failed"] == [5, 13]  # the lr-1e30 job and the non-finite adapter; the other 12 train
    assert set(result) == {"(8, 1)", "(4, 2)", "(2, 4)", "(1, 8)"}
    for mesh, r in result.items():
        assert r["weights"] < 1e-5 and r["losses"] < 1e-5, (mesh, r)
        assert r["failed"] == ref["failed"] and r["same_failures"] and r["same_real_tokens"], (mesh, r)
        assert r["sharded"], mesh  # the slot bank is spread over the adapter axis
        assert r["token_slots"] >= r["real_tokens"] == sum(ref["real_tokens"])


def run_on_8_devices(*args: str) -> dict:
    """`python -m tests.sharding_specs *args` under 8 simulated CPU devices (a real (2, 4) mesh); its JSON line."""
    env = cpu_devices_env(8)
    proc = subprocess.run([sys.executable, "-m", "tests.sharding_specs", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# Exact specs of tiny-qwen2's parameters (H=4, K=2, F=128, V=512) on a (adapter=2, model=4) mesh: heads, MLP hidden
# and vocab split 4 ways over "model"; the 2 kv heads do not divide by 4 and stay replicated.
TINY_QWEN2_SPECS_2x4 = {
    "embedding": ["model", None],
    "lm_head": [None, "model"],
    "final_norm/scale": [None],
    "layers/input_norm/scale": [None, None],
    "layers/post_attn_norm/scale": [None, None],
    "layers/attn/q/kernel": [None, None, "model", None],
    "layers/attn/k/kernel": [None, None, None, None],
    "layers/attn/v/kernel": [None, None, None, None],
    "layers/attn/q/bias": [None, "model", None],
    "layers/attn/k/bias": [None, None, None],
    "layers/attn/v/bias": [None, None, None],
    "layers/attn/o/kernel": [None, "model", None, None],
    "layers/mlp/gate/kernel": [None, None, "model"],
    "layers/mlp/up/kernel": [None, None, "model"],
    "layers/mlp/down/kernel": [None, "model", None],
}


def test_rules_replicate_what_does_not_divide():
    r = run_on_8_devices("rules")
    assert r["kv_heads_divide"] == {"spec": [None, "model"], "log": []}
    assert r["kv_heads_do_not_divide"] == {"spec": [None, None], "log": [
        "sharding rule 'kv_heads' -> 'model' dropped for a dimension of size 2: 2 does not divide by the 4-way "
        "'model' axis; replicated"]}
    assert r["model_axis_used_twice"] == {"spec": ["model", None], "log": [
        "sharding rule 'mlp' -> 'model' dropped for a dimension of size 128: 'model' already shards an earlier "
        "dimension of this tensor; replicated"]}
    assert r["rows_divide"] == {"spec": ["adapter", None], "log": []}
    assert r["rows_do_not_divide"] == {"spec": [None, None], "log": [
        "sharding rule 'batch' -> 'adapter' dropped for a dimension of size 3: 3 does not divide by the 2-way "
        "'adapter' axis; replicated"]}
    assert r["params"] == TINY_QWEN2_SPECS_2x4


def test_a_mesh_without_the_axis_replicates_and_logs(caplog):
    import types
    mesh = types.SimpleNamespace(shape={"data": 2})  # logical_to_spec reads only the axis sizes
    replicated = jax.sharding.PartitionSpec(None, None)
    with caplog.at_level(logging.WARNING, logger="seal_jax.sharding"):
        assert logical_to_spec(("vocab", "embed"), (12345, 64), mesh) == replicated
        assert logical_to_spec(("vocab", "embed"), (12345, 64), mesh, log=False) == replicated
    assert caplog.messages == ["sharding rule 'vocab' -> 'model' dropped for a dimension of size 12345: the mesh "
                               "has no 'model' axis (axes ('data',)); replicated"]


def test_activations_are_pinned_only_under_a_mesh():
    """Single device: the layer program has no sharding constraint; under `mesh_context` each layer boundary has one
    (the residual stream: batch left to propagate, length and hidden replicated)."""
    cfg = seal_jax.get_preset("tiny-qwen2")
    model = seal_jax.init_model(cfg)
    tokens = jax.numpy.zeros((2, 8), jax.numpy.int32)
    fn = jax.jit(lambda m, t: m.apply(t, t, t + 1)[0])
    assert "sharding_constraint" not in str(jax.make_jaxpr(fn)(model, tokens))
    with mesh_context(make_mesh(1, 1)):
        jaxpr = str(jax.make_jaxpr(fn)(model, tokens))
    assert jaxpr.count("sharding_constraint") == 2  # the scanned layer's input and output
    assert "P(UNCONSTRAINED, None, None)" in jaxpr

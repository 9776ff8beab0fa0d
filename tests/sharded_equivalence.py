"""Run under 8 simulated CPU devices (see test_sharding.py): sharded == single-device for several meshes.

Prints one JSON line: {mesh: {"forward": max|diff|, "generate_equal": bool, "inner_loop": max|diff|}}.
"""

import json
import sys

import jax
import numpy as np

import seal_jax
from seal_jax import distributed, inner_loop as il
from seal_jax.lora import LoraConfig, init_lora
from tests.conftest import scaled_model

MESHES = [(8, 1), (4, 2), (2, 4), (1, 8)]


def main(preset: str):
    assert jax.device_count() == 8, jax.devices()
    cfg = seal_jax.get_preset(preset).replace(num_heads=8, num_kv_heads=8, head_dim=8)  # 8 kv heads: TP over 8 divides
    model = seal_jax.init_model(cfg, seed=0)
    # Greedy generation runs on normal(0.2) weights: at init_model's normal(0.02) the tied tiny-llama only repeats the
    # last prompt token (1 distinct token per row), so "sharded greedy == single-device greedy" could hardly fail.
    gen_model = scaled_model(cfg, seed=0, scale=10.0)
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, cfg.vocab_size, (8, 40)).astype(np.int32)
    prompts = [rng.integers(3, cfg.vocab_size, n).tolist() for n in (5, 9, 14, 3, 7, 11, 6, 8)]
    K = 8
    data = [[il.Example(tuple(rng.integers(3, cfg.vocab_size, rng.integers(6, 24)).tolist())) for _ in range(n)]
            for n in (2, 3, 1, 4, 2, 3, 2, 1)]
    # Learning rates of a few 1e-4: Adam divides by sqrt(v), so float reordering across shards (~1e-7 in a gradient)
    # grows with lr in the weights; at the original 1e-3 a 2x4 mesh drifted to 1.3e-5 after 8 steps.
    specs = [il.TrainSpec(epochs=2, learning_rate=1e-4 * (1 + k % 3), seed=k) for k in range(K)]
    plan = il.build_plan(data, specs)
    lcfg = LoraConfig(rank=4, alpha=8.0, targets=("q", "v", "up"))
    lora = init_lora(cfg, lcfg, jax.random.PRNGKey(1), num_adapters=K)

    ref_logits = np.asarray(seal_jax.forward(model, tokens))
    ref_gen = seal_jax.generate(gen_model, prompts, max_new_tokens=8)
    ref_state = il.train_adapters(model, lora, plan)
    ref_w = jax.tree.leaves(ref_state.lora.weights)

    out = {}
    for shape in MESHES:
        mesh = distributed.make_mesh(*shape)
        m = distributed.shard_model(model, mesh)
        logits = np.asarray(seal_jax.forward(m, tokens))
        gen = seal_jax.generate(distributed.shard_model(gen_model, mesh), prompts, max_new_tokens=8, mesh=mesh)
        st = il.train_adapters(m, distributed.shard_lora(lora, mesh), plan, mesh=mesh)
        w = jax.tree.leaves(st.lora.weights)
        sharded_leaf = st.lora.weights["q"]["a"]
        out[str(shape)] = {
            "forward": float(np.abs(logits - ref_logits).max()),
            "generate_equal": gen == ref_gen,
            "inner_loop": max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(w, ref_w)),
            "adapter_axis_sharded": len(sharded_leaf.sharding.device_set) == 8 and shape[0] > 1,
            "mlp_spec": str(m.params["layers"]["mlp"]["up"]["kernel"].sharding.spec),
        }
    out["reference_generation"] = ref_gen
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tiny-qwen2")

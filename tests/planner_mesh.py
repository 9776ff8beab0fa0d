"""Run under 4 simulated CPU devices (tests/test_planner.py): the engine planner's per-device estimate against XLA's
memory analysis of the sharded engine call (lowered from abstract arrays), for a few meshes. Prints one JSON line:
[{"preset", "mesh", "planner", "xla"}, ...] (bytes per device)."""

import json

import jax

import seal_jax
from seal_jax import engine, planner
from seal_jax.lora import LoraConfig
from seal_jax.models.model import Model, abstract_params
from seal_jax.sharding import make_mesh

CASES = [("small-qwen2", 16, 4, 256, LoraConfig(rank=32, alpha=64.0, targets=("q", "v")), (2, 2)),
         ("small-qwen2", 16, 4, 256, LoraConfig(rank=32, alpha=64.0, targets=("q", "v")), (1, 4)),
         ("small-llama", 8, 2, 512, LoraConfig(rank=64, alpha=16.0, targets=("q", "v", "gate", "up", "down")),
          (2, 2)),
         ("small-llama", 8, 2, 512, LoraConfig(rank=64, alpha=16.0, targets=("q", "v", "gate", "up", "down")),
          (4, 1))]


def main() -> None:
    assert jax.device_count() == 4, jax.devices()
    out = []
    for preset, K, R, T, lora, mesh in CASES:
        cfg = seal_jax.get_preset(preset).replace(remat=True, vocab_size=16384)
        model = Model(cfg, abstract_params(cfg, "float32"))
        m = engine.lower_call(model, lora, engine.EngineConfig(slots=K, max_tokens_per_step=R * T), R, T,
                              mesh=make_mesh(*mesh)).memory_analysis()
        xla = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
        est = planner.plan_engine(cfg, lora, K, R, T, dtype="float32", mesh=mesh).total
        out.append({"preset": preset, "mesh": list(mesh), "planner": est, "xla": xla})
    print(json.dumps(out))


if __name__ == "__main__":
    main()

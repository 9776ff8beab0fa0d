"""orbax: a batch of adapters with optimiser state saves and restores; resuming mid-training == never stopping."""

import jax
import numpy as np

import seal_jax
from seal_jax import inner_loop as il
from seal_jax.checkpoints.state import StateCheckpointer
from seal_jax.lora import LoraConfig, init_lora


def test_resume_mid_training_equals_uninterrupted(tmp_path):
    model = seal_jax.init_model(seal_jax.get_preset("tiny-llama"), seed=0)
    rng = np.random.default_rng(0)
    data = [[il.Example(tuple(rng.integers(3, 500, rng.integers(5, 20)).tolist())) for _ in range(n)]
            for n in (3, 5)]
    specs = [il.TrainSpec(epochs=2, seed=1), il.TrainSpec(epochs=2, learning_rate=3e-3, schedule="cosine", seed=2)]
    plan = il.build_plan(data, specs)
    lora = init_lora(model.config, LoraConfig(rank=4, alpha=8.0), jax.random.PRNGKey(0), num_adapters=2)

    full = il.train_adapters(model, lora, plan)

    ckpt = StateCheckpointer(str(tmp_path / "ckpt"))
    state = il.train(model, il.init_state(lora, plan), plan, num_steps=4,
                     callback=lambda s: ckpt.save(int(s.step.max()), s))
    assert ckpt.latest_step() == 4
    del state  # "killed" here
    template = il.init_state(lora, plan)
    resumed = ckpt.restore(template)
    assert list(np.asarray(resumed.step)) == [4, 4]
    resumed = il.train(model, resumed, plan)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

"""Full fine-tuning of every base weight on an inner-loop plan (one adapter slot): the paper's CPT variant.

Same data layout, loss, schedule, AdamW and clipping as the LoRA inner loop (`seal_jax.inner_loop`, the one
optimiser chain of `seal_jax.optim`), but the gradient is taken with respect to the base parameters. The optimiser
keeps fp32 master weights and moments; the model runs in its own dtype (a bf16 model is cast from the masters each
step, so small updates accumulate in fp32 instead of being rounded away).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from seal_jax import inner_loop as il
from seal_jax import optim
from seal_jax.models.model import Model


@functools.partial(jax.jit, donate_argnames=("master", "opt_state"))
def _step(model: Model, master, opt_state, step, data, hp):
    idx = data["batch_index"][step]
    valid = (idx >= 0).astype(jnp.float32)
    rows = jnp.maximum(idx, 0)
    b = {k: data[k][rows] for k in ("tokens", "weights", "segment_ids", "kv_segment_ids", "positions")}
    dtypes = jax.tree.map(lambda p: p.dtype, model.params)

    def loss_fn(p32):
        m = Model(model.config, jax.tree.map(lambda p, dt: p.astype(dt), p32, dtypes))
        return il.token_loss(m, None, b["tokens"], b["weights"], b["segment_ids"], b["kv_segment_ids"],
                             b["positions"], valid)[0]

    loss, grads = jax.value_and_grad(loss_fn)(master)
    updates, opt_state = il.optimizer(hp).update(grads, opt_state, master)
    return optax.apply_updates(master, updates), opt_state, loss


def full_finetune(model: Model, plan: il.TrainPlan) -> tuple[Model, list[float]]:
    """Train all weights on adapter slot 0 of `plan`; returns (the updated model, per-step losses)."""
    arrays = {k: v[0] for k, v in plan.arrays().items()}
    hp = {k: arrays[k] for k in ("total_steps", "learning_rate", "schedule", "warmup_steps", "max_grad_norm",
                                 "weight_decay")}
    master = jax.tree.map(lambda p: p.astype(jnp.float32), model.params)
    opt_state = optim.init_state(master)
    losses = []
    for s in range(int(plan.total_steps[0])):
        master, opt_state, loss = _step(model, master, opt_state, jnp.int32(s), arrays, hp)
        losses.append(float(loss))
    params = jax.tree.map(lambda p, ref: p.astype(ref.dtype), master, model.params)
    return Model(model.config, params), losses

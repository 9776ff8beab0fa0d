"""Full fine-tuning of every base weight on an inner-loop plan (one adapter slot): the paper's CPT variant.

Same data layout, loss, schedule, AdamW and clipping as the LoRA inner loop (`seal_jax.inner_loop`), but the
gradient is taken with respect to the base parameters (fp32 optimiser moments; weights stay in their dtype).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from seal_jax import inner_loop as il
from seal_jax.models.model import Model


@functools.partial(jax.jit, donate_argnames=("params", "opt_state"))
def _step(model: Model, params, opt_state, step, data, hp):
    idx = data["batch_index"][step]
    valid = (idx >= 0).astype(jnp.float32)
    rows = jnp.maximum(idx, 0)
    b = {k: data[k][rows] for k in ("tokens", "weights", "segment_ids", "kv_segment_ids", "positions")}

    def loss_fn(p):
        m = Model(model.config, p)
        return il.token_loss(m, None, b["tokens"], b["weights"], b["segment_ids"], b["kv_segment_ids"],
                             b["positions"], valid)[0]

    loss, grads = jax.value_and_grad(loss_fn)(params)
    grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
    gnorm = optax.global_norm(grads)
    coef = jnp.where(hp["max_grad_norm"] > 0, jnp.minimum(1.0, hp["max_grad_norm"] / (gnorm + 1e-6)), 1.0)
    updates, opt_state = il._ADAM.update(jax.tree.map(lambda g: g * coef, grads), opt_state)
    lr = il.lr_at(step, hp["learning_rate"], hp["schedule"], hp["warmup_steps"], hp["total_steps"])
    params = jax.tree.map(lambda p, u: (p.astype(jnp.float32) - lr * (u + hp["weight_decay"] * p)).astype(p.dtype),
                          params, updates)
    return params, opt_state, loss


def full_finetune(model: Model, plan: il.TrainPlan) -> tuple[Model, list[float]]:
    """Train all weights on adapter slot 0 of `plan`; returns (the updated model, per-step losses)."""
    arrays = {k: v[0] for k, v in plan.arrays().items()}
    hp = {k: arrays[k] for k in ("total_steps", "learning_rate", "schedule", "warmup_steps", "max_grad_norm",
                                 "weight_decay")}
    params = jax.tree.map(jnp.copy, model.params)
    opt_state = il._ADAM.init(jax.tree.map(lambda p: p.astype(jnp.float32), params))
    losses = []
    for s in range(int(plan.total_steps[0])):
        params, opt_state, loss = _step(model, params, opt_state, jnp.int32(s), arrays, hp)
        losses.append(float(loss))
    return Model(model.config, params), losses

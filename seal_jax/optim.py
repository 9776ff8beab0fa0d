"""The one optimiser: torch's AdamW with torch-style global-norm clipping and HF's learning-rate schedules, as an
optax chain. The LoRA inner loops (padded and ragged), the SFT M-step and full fine-tuning all build it here.

    tx = adamw(hf_schedule(peak=1e-3, kind="linear", warmup=0, total=100), max_grad_norm=1.0, weight_decay=0.0)
    state = tx.init(params);  updates, state = tx.update(grads, state, params);  params = optax.apply_updates(...)

Every hyper-parameter may be a python number or a (traced) array, so one compiled program serves adapters with
different settings: build the chain inside the function that is `vmap`ped over adapters, from that adapter's values
(the chain's state layout never depends on them).

Matches torch exactly (tested against `torch.optim.AdamW` + `clip_grad_norm_` + transformers' schedules):
  clip       coef = min(1, max_norm / (||g||_2 + 1e-6)) over all leaves (torch's clip_grad_norm_); max_norm <= 0: off
  adam       m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  u = m_hat / (sqrt(v_hat) + eps)   (optax.scale_by_adam)
  decay      u += weight_decay * p                                    (decoupled, as AdamW; optax.add_decayed_weights)
  lr         p -= lr(step) * u, step = 0, 1, ... the update's index  (optax.scale_by_learning_rate with a schedule)
Schedules (HF's get_constant/linear/cosine_schedule_with_warmup): lr(s) = peak * s / warmup for s < warmup, then
constant 1, linear (total - s) / (total - warmup), or cosine 0.5 (1 + cos(pi (s - warmup) / (total - warmup))).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

SCHEDULES = {"constant": 0, "linear": 1, "cosine": 2}
ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8

__all__ = ["ADAM_B1", "ADAM_B2", "ADAM_EPS", "SCHEDULES", "adamw", "apply_where", "clip_by_global_norm_torch",
           "hf_schedule", "init_state", "lr_at"]


def lr_at(step, peak, kind, warmup, total):
    """HF's schedules with linear warm-up at `step` (all arguments python numbers or arrays; `kind` a SCHEDULES
    id)."""
    step, warm, tot = (jnp.asarray(x, jnp.float32) for x in (step, warmup, total))
    warm_factor = step / jnp.maximum(1.0, warm)
    progress = (step - warm) / jnp.maximum(1.0, tot - warm)
    linear = jnp.maximum(0.0, (tot - step) / jnp.maximum(1.0, tot - warm))
    cosine = jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(jnp.pi * progress)))
    after = jnp.select([kind == 0, kind == 1], [jnp.ones_like(step), linear], cosine)
    return peak * jnp.where(step < warm, warm_factor, after)


def hf_schedule(peak, kind, warmup, total) -> Callable[[Any], jax.Array]:
    """An optax schedule (count -> lr); `kind` is a name ("constant", "linear", "cosine") or a SCHEDULES id."""
    kind = SCHEDULES[kind] if isinstance(kind, str) else kind
    return lambda count: lr_at(count, peak, kind, warmup, total)


class _Empty(NamedTuple):
    pass


def clip_by_global_norm_torch(max_norm) -> optax.GradientTransformation:
    """torch.nn.utils.clip_grad_norm_: g *= min(1, max_norm / (norm + 1e-6)); max_norm <= 0 leaves g unchanged.
    (optax.clip_by_global_norm divides by the norm without the 1e-6 and cannot be switched off by value.)"""

    def update(updates, state, params=None):
        del params
        norm = optax.global_norm(updates)
        coef = jnp.where(max_norm > 0, jnp.minimum(1.0, max_norm / (norm + 1e-6)), 1.0)
        return jax.tree.map(lambda g: (g * coef).astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: _Empty(), update)


def adamw(learning_rate, max_grad_norm=1.0, weight_decay=0.0, b1: float = ADAM_B1, b2: float = ADAM_B2,
          eps: float = ADAM_EPS) -> optax.GradientTransformation:
    """Clip (torch-style) -> Adam -> decoupled weight decay -> learning rate (a number or a schedule)."""
    return optax.chain(clip_by_global_norm_torch(max_grad_norm),
                       optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
                       optax.add_decayed_weights(weight_decay),
                       optax.scale_by_learning_rate(learning_rate))


def init_state(params):
    """A fresh `adamw` state for `params` (its layout does not depend on the hyper-parameter values, so one init
    serves every adapter's settings)."""
    return adamw(hf_schedule(0.0, 0, 0, 1)).init(params)


def apply_where(pred, new, old):
    """`new` where the scalar `pred` holds, else `old` (leaf by leaf): a skipped or failed step changes nothing."""
    return jax.tree.map(lambda n, o: jnp.where(pred, n, o), new, old)

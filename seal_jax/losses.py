"""Next-token cross-entropy without materialising [tokens, V] fp32 logits.

The model returns final-normed hidden states; `token_nll` projects them onto the vocabulary a chunk of tokens at a
time (`lax.map` over chunks, each checkpointed, so the backward pass recomputes one chunk's logits instead of storing
them all). Peak logits memory is [chunk, V] fp32 instead of [N, V]: for Qwen2.5's 152k vocabulary, 16 adapters x 2048
tokens would be 20 GB of logits; in 512-token chunks it is 0.3 GB.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LOGITS_BUDGET_BYTES = 1 << 28  # fp32 logits per chunk (256 MiB)


def chunk_size(n: int, vocab: int, budget_bytes: int = LOGITS_BUDGET_BYTES) -> int:
    """Tokens per chunk: the largest power of two whose [chunk, V] fp32 logits fit the budget (at least 8), capped at
    the token count rounded up to a power of two."""
    c = 8
    while c * 2 * vocab * 4 <= budget_bytes and c < n:
        c *= 2
    return c


def token_nll(hidden, head, targets, chunk: int | None = None):
    """Per-token negative log-likelihood of `targets`.

    hidden [N, D] (any float dtype), head [D, V], targets [N] int -> nll [N] float32
    (= logsumexp(h W) - (h W)[target], with the projection accumulated in fp32 as the model's own logits are).
    """
    N, D = hidden.shape
    V = head.shape[1]
    c = chunk or chunk_size(N, V)
    pad = (-N) % c
    h = jnp.pad(hidden, ((0, pad), (0, 0))).reshape(-1, c, D)  # [N/c, c, D]
    t = jnp.pad(targets, (0, pad)).reshape(-1, c)  # [N/c, c]
    w = head.astype(hidden.dtype)

    @jax.checkpoint
    def one(args):
        hc, tc = args
        logits = jnp.einsum("cd,dv->cv", hc, w, preferred_element_type=jnp.float32)  # [c, V]
        gold = jnp.take_along_axis(logits, tc[:, None], axis=-1)[:, 0]
        return jax.nn.logsumexp(logits, axis=-1) - gold  # [c]

    return jax.lax.map(one, (h, t)).reshape(-1)[:N]


def next_token_nll(hidden, head, tokens, segment_ids, chunk: int | None = None):
    """NLL of predicting token t+1 from position t, per row.

    hidden [R, T, D], tokens/segment_ids [R, T] -> (nll [R, T-1], valid [R, T-1]) where valid marks targets that
    continue the same (non-padding) sequence as the token predicting them (no predictions across packed segments).
    """
    R, T, D = hidden.shape
    nll = token_nll(hidden[:, :-1].reshape(-1, D), head, tokens[:, 1:].reshape(-1), chunk).reshape(R, T - 1)
    valid = (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] > 0)
    return nll, valid

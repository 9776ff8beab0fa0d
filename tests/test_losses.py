"""Chunked cross-entropy equals the full-logits computation (values and gradients), for any chunk size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seal_jax.losses import chunk_size, next_token_nll, token_nll


def _full(hidden, head, targets):
    logp = jax.nn.log_softmax(jnp.einsum("nd,dv->nv", hidden, head), axis=-1)
    return -jnp.take_along_axis(logp, targets[:, None], axis=-1)[:, 0]


@pytest.mark.parametrize("n, chunk", [(50, 8), (64, 64), (37, None), (5, 16)])
def test_chunked_equals_full(n, chunk):
    rng = np.random.default_rng(n)
    D, V = 12, 301
    h = jnp.asarray(rng.normal(size=(n, D)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(D, V)) * 0.3, jnp.float32)
    t = jnp.asarray(rng.integers(0, V, n), jnp.int32)
    np.testing.assert_allclose(token_nll(h, w, t, chunk), _full(h, w, t), rtol=1e-5, atol=1e-5)
    weights = jnp.asarray(rng.random(n), jnp.float32)
    g_chunk = jax.grad(lambda h, w: jnp.sum(token_nll(h, w, t, chunk) * weights), argnums=(0, 1))(h, w)
    g_full = jax.grad(lambda h, w: jnp.sum(_full(h, w, t) * weights), argnums=(0, 1))(h, w)
    for a, b in zip(g_chunk, g_full):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_next_token_targets_stay_in_their_segment():
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, 50, (2, 6)), jnp.int32)
    seg = jnp.asarray([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1]], jnp.int32)
    h = jnp.asarray(rng.normal(size=(2, 6, 8)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(8, 50)), jnp.float32)
    nll, valid = next_token_nll(h, w, tokens, seg, chunk=4)
    assert valid.tolist() == [[True, True, False, True, False], [True] * 5]
    np.testing.assert_allclose(nll[0, 0], _full(h[0, :1], w, tokens[0, 1:2])[0], rtol=1e-5)


def test_chunk_size_bounds_the_logits():
    assert chunk_size(4096, 152064) * 152064 * 4 <= 1 << 28
    assert chunk_size(10, 100) == 16 and chunk_size(1 << 20, 1 << 30) == 8

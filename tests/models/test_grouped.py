"""Grouped (ragged) LoRA: tiled == ragged_dot == dense == a per-token reference, values and gradients; the model's
ragged form equals running each adapter's tokens alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seal_jax
from seal_jax.lora import LoraConfig, init_lora
from seal_jax.models.grouped import grouped_lora, tile_size, token_groups

pytestmark = pytest.mark.slow(minutes=0.5)  # its time in a parallel run: runs first, longest first (tests/conftest.py)


def _reference(x, a, b, scale, group_ids, group_sizes):
    out = np.zeros((x.shape[0], b.shape[-1]), np.float64)
    pos = 0
    for g, n in zip(np.asarray(group_ids), np.asarray(group_sizes)):
        if g >= 0:
            xs = np.asarray(x[pos:pos + n], np.float64)
            out[pos:pos + n] = scale[g] * (xs @ np.asarray(a[g], np.float64)) @ np.asarray(b[g], np.float64)
        pos += n
    return out


CASES = [  # (N, group_ids, group_sizes)
    (64, [0, 1, 2], [10, 30, 24]),  # exact cover, odd boundaries
    (64, [2, -1, 0, 2], [5, 3, 17, 9]),  # an adapter twice, a no-adapter group, a tail outside every group
    (96, [1, 0, -1, -1], [96, 0, 0, 0]),  # one group, empty groups
    (40, [0, 1, 2, 0, 1], [1, 1, 1, 1, 1]),  # decode-like: one token per group
]


@pytest.mark.parametrize("n,ids,sizes", CASES)
def test_backends_match_reference(n, ids, sizes):
    rng = np.random.default_rng(0)
    K, d_in, r, d_out = 3, 12, 4, 10
    x = jnp.asarray(rng.normal(size=(n, d_in)), jnp.float32)
    a = jnp.asarray(rng.normal(size=(K, d_in, r)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(K, r, d_out)), jnp.float32)
    scale = jnp.asarray([0.5, 2.0, 1.5], jnp.float32)
    gi, gs = jnp.asarray(ids, jnp.int32), jnp.asarray(sizes, jnp.int32)
    ref = _reference(x, a, b, np.asarray(scale), ids, sizes)
    for backend in ("tiled", "ragged_dot", "dense"):
        got = np.asarray(jax.jit(lambda *z: grouped_lora(*z, backend=backend))(x, a, b, scale, gi, gs))
        assert np.abs(got - ref).max() < 1e-4, backend

    def loss(backend):
        return lambda a, b, x: jnp.sum(jnp.sin(grouped_lora(x, a, b, scale, gi, gs, backend)))

    g_t = jax.grad(loss("tiled"), argnums=(0, 1, 2))(a, b, x)
    for other in ("ragged_dot", "dense"):
        g_r = jax.grad(loss(other), argnums=(0, 1, 2))(a, b, x)
        for u, v in zip(g_t, g_r):
            np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-4, atol=1e-4, err_msg=other)
    # an adapter that owns no token gets exactly zero gradient
    unused = [k for k in range(K) if not any(i == k and s > 0 for i, s in zip(ids, sizes))]
    for k in unused:
        assert not np.asarray(g_t[0][k]).any() and not np.asarray(g_t[1][k]).any()


def test_token_groups_and_tile_size():
    tok = np.asarray(token_groups(jnp.asarray([2, -1, 0]), jnp.asarray([2, 1, 3]), 8))
    assert tok.tolist() == [2, 2, -1, 0, 0, 0, -1, -1]
    assert tile_size(4096, 80) == 16 and 4096 % tile_size(4096, 80) == 0
    assert tile_size(24, 3) == 4 and tile_size(7, 1) == 1


def test_model_ragged_form_equals_each_adapter_alone():
    """Three adapters' sequences packed in two rows (one sequence split off by a row end, a padding gap): the logits of
    every real token equal those of its sequence run alone with its own adapter."""
    model = seal_jax.init_model(seal_jax.get_preset("tiny-qwen2"), seed=0)
    cfg = LoraConfig(rank=4, alpha=8.0, targets=("q", "v", "up", "down"))
    lora = init_lora(model.config, cfg, jax.random.PRNGKey(0), num_adapters=3)
    lora = jax.tree.map(lambda w: w + 0.05 * jax.random.normal(jax.random.PRNGKey(1), w.shape), lora)  # B != 0
    rng = np.random.default_rng(0)
    V = model.config.vocab_size
    seqs = [(0, 9), (0, 5), (1, 12), (2, 7), (1, 4)]  # (adapter, length), in stream order
    T = 20
    rows = [[(0, 9), (0, 5)], [(1, 12), (2, 7)], [(1, 4)]]  # row 0 has a 6-token padding gap at its end
    tokens = np.zeros((3, T), np.int32)
    seg = np.zeros((3, T), np.int32)
    pos = np.zeros((3, T), np.int32)
    ids, sizes, placed = [], [], []
    for r, row in enumerate(rows):
        used = 0
        for s, (k, n) in enumerate(row):
            t = rng.integers(3, V, n)
            tokens[r, used:used + n], seg[r, used:used + n], pos[r, used:used + n] = t, s + 1, np.arange(n)
            placed.append((r, used, n, k, t))
            ids.append(k)
            sizes.append(n)
            used += n
        ids.append(-1)
        sizes.append(T - used)
    assert len(seqs) == len(placed)
    for backend in ("tiled", "ragged_dot", "dense"):
        m = seal_jax.Model(model.config.replace(lora_backend=backend), model.params)
        tree = lora.ragged_tree(jnp.asarray(ids), jnp.asarray(sizes))
        logits = np.asarray(jax.jit(lambda m, t, p, s, tr: m.apply(t, p, s, lora=tr)[0])(m, tokens, pos, seg, tree))
        for r, start, n, k, t in placed:
            alone = np.asarray(seal_jax.forward(model, t[None], lora=lora.adapter(k)))[0]
            assert np.abs(logits[r, start:start + n] - alone).max() < 1e-4, (backend, r, k)

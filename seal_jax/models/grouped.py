"""Grouped (ragged) LoRA: one token stream, contiguous groups of tokens, each group using its own adapter.

The ragged inner loop packs the current batch of every active adapter into one stream of N tokens (rows of a bucketed
length, flattened row-major), and batched generation sorts its rows by adapter. The frozen base runs once over all N
tokens; the LoRA term of token n uses adapter group_ids[g] of the group g that holds it:

    x          [N, in]       the flat token stream (rows flattened)
    a          [K, in, r]    K adapters' A (this layer);  b [K, r, out];  scale [K]
    group_ids  [G]  int32    adapter of each group (-1: no adapter, e.g. padding)
    group_sizes[G]  int32    tokens in each group; groups are consecutive from token 0, sum <= N (the rest: none)
    y          [N, out] = scale[k] * (x[n] @ a[k]) @ b[k]   for token n of a group with adapter k, else 0

Backends (`lora_backend` of the model config):
  "tiled"       (the portable default) the stream is cut at every block boundary (`tile` tokens) and every group
                boundary into P = N / tile + G + 1 tiles, each inside one block and one group; tile p gathers its
                block's tokens and its adapter's weights and computes [tile, in] @ [in, r] @ [r, out], masked to its
                own tokens; results are added back into the blocks. Work: (N + G tile) tokens instead of N.
  "ragged_dot"  `jax.lax.ragged_dot` over the group-ordered weights a[group_ids] (grouped-matmul kernels on TPU,
                and on GPU with jax_ragged_dot_use_gpu_pallas_triton_lowering; XLA:CPU expands it densely, G x the
                work, so it is for accelerators and tests only).
  "dense"       every token against all K adapters at once: h = x @ [A_1 .. A_K] [N, K r], each token's h kept only
                in its own adapter's r columns (a select), then y = h @ [B_1; ..; B_K] scaled per column. Two plain
                matmuls, K x the LoRA work: cheap while K r stays small beside the layer's width, and no gathers or
                grouped kernels (GPUs, where stock ragged_dot is reported to expand densely anyway). Non-finite
                weights are zeroed first (every token meets every adapter's A and B: 0 * nan = nan); the engine
                never trains an adapter with non-finite weights (it fails it at admission).
All give the same values (tests/models/test_grouped.py), and gradients flow to every adapter's own A and B.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

BACKENDS = ("auto", "tiled", "ragged_dot", "dense")


def resolve_backend(backend: str) -> str:
    """"auto": ragged_dot on TPU (native grouped matmul), tiled elsewhere."""
    if backend != "auto":
        return backend
    return "ragged_dot" if jax.default_backend() == "tpu" else "tiled"


def tile_size(n: int, groups: int) -> int:
    """Tokens per tile for N tokens in G groups: about N / 2G (so the G partial tiles cost at most ~half the
    stream, and the P = N / tile + G + 1 tiles gather at most ~3G adapters' weights), a power of two in [4, 512]
    that divides N when possible."""
    target = max(4, min(512, n // max(2 * groups, 1)))
    t = 1
    while t * 2 <= target:
        t *= 2
    while t > 1 and n % t:
        t //= 2
    return t


def token_groups(group_ids, group_sizes, n: int):
    """Per token: its group's adapter id (-1 outside every group) -> [N] int32."""
    ids = jnp.concatenate([group_ids, jnp.full((1,), -1, group_ids.dtype)])
    used = jnp.sum(group_sizes)
    return jnp.repeat(ids, jnp.concatenate([group_sizes, (n - used)[None]]), total_repeat_length=n)


def _tiled(x, a, b, scale, group_ids, group_sizes, tile: int):
    N, d_in = x.shape
    G = group_sizes.shape[0]
    nb = N // tile
    group_end = jnp.cumsum(group_sizes)  # [G]
    group_start = group_end - group_sizes
    cuts = [jnp.arange(nb, dtype=group_start.dtype) * tile, group_start, group_end[-1:]]  # blocks, groups, tail
    bounds = jnp.sort(jnp.concatenate(cuts))  # [P = N / tile + G + 1]
    starts = bounds
    ends = jnp.concatenate([bounds[1:], jnp.full((1,), N, bounds.dtype)])  # [P]
    block = jnp.minimum(starts // tile, nb - 1)  # [P]
    grp = jnp.searchsorted(group_end, starts, side="right")  # [P] group index (G: past the last group)
    adapter = jnp.where(grp < G, group_ids[jnp.minimum(grp, G - 1)], -1)  # [P]
    on = (adapter >= 0) & (ends > starts)
    k = jnp.maximum(adapter, 0)
    idx = block[:, None] * tile + jnp.arange(tile)[None, :]  # [P, tile] token index of each tile slot
    mask = on[:, None] & (idx >= starts[:, None]) & (idx < ends[:, None])  # [P, tile]
    # Selects (not multiplies) keep other groups' tokens out of a tile in both directions: a non-finite token or
    # adapter of one group never reaches another's values or gradients (0 * nan = nan).
    xt = jnp.where(mask[..., None], x.reshape(nb, tile, d_in)[block], 0.0)  # [P, tile, in]
    h = jnp.einsum("ptd,pdr->ptr", xt, a[k])  # [P, tile, r]
    y = jnp.einsum("ptr,pro->pto", h, b[k]) * scale[k][:, None, None]  # [P, tile, out]
    y = jnp.where(mask[..., None], y, 0.0)
    out = jnp.zeros((nb, tile, y.shape[-1]), y.dtype).at[block].add(y)  # [nb, tile, out]
    return out.reshape(N, -1)


def _ragged_dot(x, a, b, scale, group_ids, group_sizes):
    N = x.shape[0]
    # a last, adapter-less group takes the tokens after the given groups, so the groups cover the stream exactly
    group_sizes = jnp.concatenate([group_sizes, (N - jnp.sum(group_sizes))[None]])
    group_ids = jnp.concatenate([group_ids, jnp.full((1,), -1, group_ids.dtype)])
    on = group_ids >= 0
    k = jnp.maximum(group_ids, 0)
    ag = jnp.where(on[:, None, None], a[k], 0.0)  # [G, in, r] in group order
    bg = jnp.where(on[:, None, None], b[k], 0.0)  # [G, r, out]
    h = jax.lax.ragged_dot(x, ag, group_sizes)  # [N, r]
    y = jax.lax.ragged_dot(h, bg, group_sizes)  # [N, out]
    tok = token_groups(group_ids[:-1], group_sizes[:-1], N)  # [N]
    s = jnp.where(tok >= 0, scale[jnp.maximum(tok, 0)], 0.0)
    return y * s[:, None]


def _dense(x, a, b, scale, group_ids, group_sizes):
    N = x.shape[0]
    K, d_in, r = a.shape
    tok = token_groups(group_ids, group_sizes, N)  # [N] adapter of each token (-1: none)
    finite = lambda w: jnp.where(jnp.isfinite(w), w, 0.0)  # noqa: E731
    h = jnp.einsum("nd,dc->nc", x, finite(jnp.moveaxis(a, 0, 1).reshape(d_in, K * r)))  # [N, K*r]
    own = (jnp.arange(K * r)[None, :] // r) == tok[:, None]  # [N, K*r]: the token's own adapter's columns
    h = jnp.where(own, h * jnp.repeat(scale, r)[None, :], 0.0)
    return jnp.einsum("nc,co->no", h, finite(b.reshape(K * r, -1)))  # [N, out]


def grouped_lora(x, a, b, scale, group_ids, group_sizes, backend: str = "auto"):
    """The LoRA term of a grouped token stream (see the module docstring): x [N, in] -> [N, out] in a's dtype."""
    x = x.astype(a.dtype)
    backend = resolve_backend(backend)
    if backend == "tiled":
        return _tiled(x, a, b, scale, group_ids, group_sizes, tile_size(x.shape[0], group_sizes.shape[0]))
    if backend == "ragged_dot":
        return _ragged_dot(x, a, b, scale, group_ids, group_sizes)
    if backend == "dense":
        return _dense(x, a, b, scale, group_ids, group_sizes)
    raise ValueError(f"unknown LoRA backend {backend!r} (choose from {', '.join(BACKENDS)})")

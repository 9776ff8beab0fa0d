"""Attention backends behind one function, `attend`.

Shape letters (as in transformer.py): B batch, T query length, S key length (T, or the KV-cache length), H query
heads, K kv heads, G = H // K query heads per kv head (GQA), Dh head dim.

    attend(q [B, T, H, Dh], k [B, S, K, Dh], v [B, S, K, Dh],
           q_segment_ids [B, T], kv_segment_ids [B, S], q_offset, implementation) -> [B, T, H, Dh]

Masking is by slot and segment: query t sits at key slot `q_offset + t` (0 without a cache; the cache index with
one) and sees key s iff s <= q_offset + t, kv_segment_ids[s] == q_segment_ids[t] and kv_segment_ids[s] != 0 (0 marks
padding and empty cache slots). One mask thus covers left/right padding, packed rows and cached decode. `q_offset`
is a python int or a traced int32 scalar. Query head h uses kv head h // G.

Rows with no visible key (padding queries) get finite values that callers must not use ("einsum", "xla" and
"blockwise" give the mean of all S values there, "cudnn" and "splash" other finite values). Every other row agrees
across backends to rounding.

Implementations (`ModelConfig.attention`):
  einsum     explicit fp32 scores [B, K, G, T, S]; the reference and the CPU path for small calls. Memory O(B*H*T*S)
             fp32 (4 rows x 32 heads x 8192^2 tokens: 34 GB per layer).
  xla        `jax.nn.dot_product_attention(implementation="xla")` with the boolean mask (same algorithm as einsum).
  blockwise  flash attention in plain JAX (custom VJP, online softmax, FlashAttention-2 backward) over query / key
             blocks, skipping the block pairs the mask hides (causality, segments, padding), so a packed row of short
             sequences costs about sum_i L_i * block instead of T * S. Exact (fp32 accumulation), runs wherever XLA
             runs, memory O(B*H*bq*bk) for scores plus O(B*T*H*Dh); see `_blockwise`.
  cudnn      cuDNN flash attention through `jax.nn.dot_product_attention(implementation="cudnn")`; see `_cudnn`.
             Used on CUDA GPUs (compute capability >= 8.0) for bf16/fp16 with a supported head dim and T > 1;
             otherwise the call falls back (see `select_implementation`).
  splash     TPU splash attention (Pallas) with SegmentIds and a causal mask; only without a cache offset
             (q_offset a python 0 and T == S, i.e. training and slot-0 prefill without a cache); see `_splash`.
  auto       CPU: blockwise for large calls (T >= 32 and T * S > 256^2, where it is faster than einsum and its memory
             stays bounded), else einsum; GPU: cudnn; TPU: splash when the program runs on one device.
A backend that cannot serve a call (wrong platform, dtype, shape, cache offset) falls back to "blockwise" for large
calls (on GPU / TPU: T >= 32 and T * S > 2048^2, where xla's scores reach gigabytes per layer), else to "einsum" on
CPU and "xla" elsewhere; `select_implementation` says which backend a call gets (`_select` also gives the reason).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from seal_jax.models.config import ATTENTION_IMPLEMENTATIONS

Array = jax.Array
_MASKED = -1e30  # large negative instead of -inf: a fully masked (padding) query row stays finite

__all__ = ["ATTENTION_IMPLEMENTATIONS", "attend", "attention_mask", "select_implementation"]


def attend(q: Array, k: Array, v: Array, q_segment_ids: Array, kv_segment_ids: Array, q_offset=0,
           implementation: str = "auto") -> Array:
    """Masked multi-head attention (GQA when K < H); returns [B, T, H, Dh] in q's dtype. See the module docstring.

    Non-finite keys and values are zeroed first: a masked key still enters the score and value contractions with
    weight exactly 0, and 0 * nan = nan, so one non-finite token (an adapter that diverged) would otherwise reach
    every query of its row, including other sequences packed beside it. The token's own sequence stays non-finite
    through its residual stream, so a divergence is still seen where it happened."""
    name, _ = _select(implementation, q, k, q_offset, _platform())
    k = jnp.where(jnp.isfinite(k), k, 0).astype(k.dtype)
    v = jnp.where(jnp.isfinite(v), v, 0).astype(v.dtype)
    return _BACKENDS[name](q, k, v, q_segment_ids, kv_segment_ids, q_offset)


def attention_mask(q_segment_ids: Array, kv_segment_ids: Array, q_offset=0) -> Array:
    """bool [B, T, S]: key s visible to query t (causal by slot, same segment, key not padding)."""
    T, S = q_segment_ids.shape[1], kv_segment_ids.shape[1]
    q_slot = jnp.arange(T, dtype=jnp.int32)  # [T]
    if not _is_static_zero(q_offset):
        q_slot = q_slot + q_offset
    kv_slot = jnp.arange(S, dtype=jnp.int32)  # [S]
    return ((kv_slot[None, None, :] <= q_slot[None, :, None])
            & (kv_segment_ids[:, None, :] == q_segment_ids[:, :, None])
            & (kv_segment_ids[:, None, :] != 0))  # [B, T, S]


def select_implementation(implementation: str, q, k, q_offset=0, platform: str | None = None) -> str:
    """The backend `attend` runs for q [B, T, H, Dh] / k [B, S, K, Dh] (arrays or ShapeDtypeStructs) on `platform`
    ("cpu" | "gpu" | "tpu"; default: JAX's default backend)."""
    return _select(implementation, q, k, q_offset, platform or _platform())[0]


# ---------------------------------------------------------------------- selection
def _platform() -> str:
    return jax.default_backend()


def _cuda_capability() -> tuple[int, int] | None:
    """(major, minor) of the first GPU when it is a CUDA device, else None (ROCm devices have no such attribute)."""
    try:
        cc = jax.devices("gpu")[0].compute_capability
        major, minor = str(cc).split(".")[:2]
        return int(major), int(minor)
    except Exception:  # no GPU backend, not CUDA, or an unparsable value
        return None


def _is_static_zero(q_offset) -> bool:
    return isinstance(q_offset, (int, np.integer)) and not isinstance(q_offset, bool) and q_offset == 0


# "Large" calls, where blockwise replaces einsum / xla (see `_large` and tests/models/test_attention.py).
_BLOCKWISE_MIN_T = 32  # fewer queries (decode steps, short chunks): scores [B, H, T, S] are small and einsum is faster
# CPU: above one 256 x 256 block pair (`_BLOCK_CPU`), where blockwise starts to bound memory; it is also 2-5x faster
# than einsum there (fwd and fwd+bwd, measured from T = S = 192 up). Up to one block it would hold the same scores as
# einsum, which stays (the reference, and what seal_jax.planner's activation estimate assumes).
_BLOCKWISE_MIN_TS_CPU = 256 * 256
# GPU / TPU: where xla's fp32 scores reach 16 MiB per (row, head), 2 GiB per layer for 4 rows x 32 heads (and as much
# again for the backward); below it xla's kernels are left alone.
_BLOCKWISE_MIN_TS = 2048 * 2048


def _large(q, k, platform: str) -> bool:
    T, S = q.shape[1], k.shape[1]
    return T >= _BLOCKWISE_MIN_T and T * S > (_BLOCKWISE_MIN_TS_CPU if platform == "cpu" else _BLOCKWISE_MIN_TS)


def _select(implementation: str, q, k, q_offset, platform: str) -> tuple[str, str]:
    """(backend, why it is not the one asked for; "" when it is)."""
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {implementation!r} "
                         f"(allowed: {', '.join(ATTENTION_IMPLEMENTATIONS)})")
    fallback = "blockwise" if _large(q, k, platform) else ("einsum" if platform == "cpu" else "xla")
    if implementation in ("einsum", "xla", "blockwise"):
        return implementation, ""
    if implementation == "auto":
        if platform == "gpu":
            implementation = "cudnn"
        elif platform == "tpu":
            if jax.device_count() > 1:
                # A pallas_call has no SPMD partitioning rule: under a multi-device jit XLA would gather its operands
                # onto every device. Ask for "splash" explicitly only where that is wanted (or inside shard_map).
                return fallback, "auto: splash is chosen only for single-device programs"
            implementation = "splash"
        else:
            return fallback, ""
    why = _cudnn_unsupported(q, k, platform) if implementation == "cudnn" else _splash_unsupported(
        q, k, q_offset, platform)
    return (fallback, why) if why else (implementation, "")


def _cudnn_unsupported(q, k, platform: str) -> str:
    if platform != "gpu":
        return f"cudnn needs a GPU (platform {platform})"
    cc = _cuda_capability()
    if cc is None or cc < (8, 0):
        return f"cudnn flash attention needs a CUDA GPU of compute capability >= 8.0 (got {cc})"
    if jnp.dtype(q.dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return f"cudnn flash attention supports bf16/fp16 only (got {jnp.dtype(q.dtype).name})"
    Dh, h_max = q.shape[-1], (256 if cc >= (9, 0) else 128)
    if Dh % 8 or Dh > h_max:
        return f"cudnn flash attention needs head_dim % 8 == 0 and <= {h_max} (got {Dh})"
    if q.shape[1] == 1:
        # A decode step: the scores are [B, H, 1, S] (small) and the step is bound by reading K/V, so a flash kernel
        # has nothing to save; cuDNN's support for s_q = 1 with a bias operand is also untested here.
        return "T == 1 (decode step)"
    return ""


def _splash_unsupported(q, k, q_offset, platform: str) -> str:
    if platform != "tpu":
        return f"splash needs a TPU (platform {platform})"
    if not _is_static_zero(q_offset) or q.shape[1] != k.shape[1]:
        # The splash causal mask is static (built on the host from T and S), so a traced cache index cannot place it.
        return "splash serves only the no-cache case (q_offset a python 0 and T == S)"
    try:
        from jax.experimental.pallas.ops.tpu import splash_attention  # noqa: F401
    except ImportError as e:
        return f"splash attention is not importable ({e})"
    return ""


# ---------------------------------------------------------------------- einsum (reference)
def _einsum(q, k, v, q_segment_ids, kv_segment_ids, q_offset):
    B, T, H, Dh = q.shape
    K = k.shape[2]
    mask = attention_mask(q_segment_ids, kv_segment_ids, q_offset)  # [B, T, S]
    qg = q.reshape(B, T, K, H // K, Dh)  # [B, T, K, G, Dh]
    logits = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32)
    logits = logits * (Dh ** -0.5)
    logits = jnp.where(mask[:, None, None, :, :], logits, _MASKED)  # [B, K, G, T, S]
    probs = jax.nn.softmax(logits, axis=-1).astype(q.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(B, T, H, Dh)  # [B, T, H, Dh]


# ---------------------------------------------------------------------- xla
def _xla(q, k, v, q_segment_ids, kv_segment_ids, q_offset):
    mask = attention_mask(q_segment_ids, kv_segment_ids, q_offset)  # [B, T, S]
    return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], scale=q.shape[-1] ** -0.5,
                                        implementation="xla")  # mask [B, 1, T, S] broadcast over heads


# ---------------------------------------------------------------------- cudnn
def _cudnn(q, k, v, q_segment_ids, kv_segment_ids, q_offset, impl: str = "cudnn"):
    """cuDNN flash attention with the whole mask as a boolean [B, 1, T, S] operand.

    How each case is expressed (jax/_src/nn/functions.py, jax/_src/cudnn/fused_attention_stablehlo.py):
      * padding, left or right, and packed segments: in the boolean mask, which JAX turns into an additive bf16/fp16
        bias (0 / -2^41 resp. -2^15) that cuDNN adds to the scores; a fully masked (padding) row stays finite.
        Not chosen: `query_seq_lengths` / `key_value_seq_lengths` describe only right padding (a valid prefix); the
        packed layout (q_offsets / kv_offsets with per-segment lengths) exists only in the private
        `jax._src.cudnn` API, needs Hopper, contiguous segments, a static maximum segment count and identical query
        and key segmentations (kv_segment_ids may differ here), and its batching rule does not handle the offsets.
      * causality: `is_causal=True` (cuDNN skips the blocks above the diagonal) when q_offset is a python 0 and
        T == S; the mask also holds it. cuDNN's causal mask is aligned at query 0 = key 0, so with a cache offset
        (prefill / chunks at a traced cache index) causality by slot comes from the mask alone (is_causal=False).
      * cached decode (T == 1) is not sent here at all (see `_cudnn_unsupported`).
    Odd T or S are padded by one masked row / key: cuDNN's bias kernels need even lengths when trained, and whether
    a backward pass follows is not known here. Cost of the mask route: the [B, 1, T, S] bias is materialised (bf16),
    and JAX 0.10's backward also computes its gradient (same shape), which is dropped.

    vmap: JAX's cuDNN batching rule (0.10) reshapes a batched bias to [B, N, T, S] and so fails for a head-broadcast
    mask, and the inner loop vmaps attention over adapters. `_flash` therefore folds any vmapped axes into the batch
    axis itself (custom_vmap), forward and backward; its backward recomputes the cuDNN forward (the public API has no
    entry point for cuDNN's backward kernel alone), one extra flash forward per training step.
    `impl="xla"` runs exactly this wrapping with the XLA kernel (how it is tested on CPU).
    """
    B, T, H, Dh = q.shape
    S = k.shape[1]
    causal = _is_static_zero(q_offset) and T == S
    mask = attention_mask(q_segment_ids, kv_segment_ids, q_offset)  # [B, T, S]
    pt, ps = T % 2, S % 2
    if pt or ps:
        q = jnp.pad(q, ((0, 0), (0, pt), (0, 0), (0, 0)))  # [B, T', H, Dh]
        k = jnp.pad(k, ((0, 0), (0, ps), (0, 0), (0, 0)))  # [B, S', K, Dh]
        v = jnp.pad(v, ((0, 0), (0, ps), (0, 0), (0, 0)))
        mask = jnp.pad(mask, ((0, 0), (0, pt), (0, ps)))  # padded rows / keys masked (False)
    out = _flash(impl, causal, float(Dh ** -0.5))(q, k, v, mask[:, None])  # [B, T', H, Dh]
    return out[:, :T]


def _fold_vmap(fn):
    """fn(*arrays) -> tuple of arrays, all with a leading batch axis. Under jax.vmap, the mapped axis is folded into
    that batch axis and fn is called unbatched (nested vmaps fold one after another)."""
    f = jax.custom_batching.custom_vmap(fn)

    @f.def_vmap
    def _rule(axis_size, in_batched, *args):
        args = [a if b else jnp.broadcast_to(a, (axis_size,) + a.shape) for a, b in zip(args, in_batched)]
        outs = f(*[a.reshape((-1,) + a.shape[2:]) for a in args])  # [axis_size * B, ...]
        outs = tuple(o.reshape((axis_size, -1) + o.shape[1:]) for o in outs)
        return outs, tuple(True for _ in outs)

    return f


@functools.lru_cache(maxsize=None)
def _flash(impl: str, is_causal: bool, scale: float):
    """(q [B,T,H,Dh], k [B,S,K,Dh], v, mask bool [B,1,T,S]) -> [B,T,H,Dh] by jax.nn.dot_product_attention(impl),
    differentiable in q, k, v and safe under vmap (see `_cudnn`)."""

    def call(q, k, v, mask):
        return (jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, is_causal=is_causal,
                                             implementation=impl),)

    def call_bwd(q, k, v, mask, g):
        _, pull = jax.vjp(lambda q, k, v: call(q, k, v, mask)[0], q, k, v)
        return tuple(pull(g))  # (dq, dk, dv)

    fwd_folded, bwd_folded = _fold_vmap(call), _fold_vmap(call_bwd)

    @jax.custom_vjp
    def flash(q, k, v, mask):
        return fwd_folded(q, k, v, mask)[0]

    def flash_fwd(q, k, v, mask):
        return fwd_folded(q, k, v, mask)[0], (q, k, v, mask)

    def flash_bwd(res, g):
        return (*bwd_folded(*res, g), None)

    flash.defvjp(flash_fwd, flash_bwd)
    return flash


# ---------------------------------------------------------------------- blockwise (flash attention in plain JAX)
# Default query / key block (see `_block_size`). CPU: 256 was fastest in fwd and fwd+bwd (4 x 8192 packed rows and
# one 4096-token causal row, 32 heads x 64 dims; 128 and 512 were slower). GPU / TPU (unmeasured): 512, fewer loop
# steps and larger matmuls.
_BLOCK_CPU, _BLOCK = 256, 512


def _block_size(n: int, target: int) -> int:
    """Block length for a length-n axis: ceil(n / ceil(n / target)) rounded up to a multiple of 8 when there are
    several blocks, so that the axis is cut into near-equal blocks and padding stays below 8 slots per block."""
    nb = -(-n // target)
    b = -(-n // nb)
    return b if nb == 1 else -(-b // 8) * 8


def _blockwise(q, k, v, q_segment_ids, kv_segment_ids, q_offset, *, block_q: int | None = None,
               block_k: int | None = None):
    """Exact attention (same mask and padding-row convention as einsum) in O(H * bq * bk) score memory: FlashAttention-2
    in plain JAX under `jax.custom_vjp`, skipping every (query block, key block) pair the mask hides.

    Blocks: T and S are cut into bq ~ block_q and bk ~ block_k slots (default `_BLOCK_CPU` / `_BLOCK`, see
    `_block_size`); T and S are padded to block multiples with segment 0 (padding queries / invisible keys) and the
    padding is cut off again. Decode (T = 1) works too (bq = 1), though einsum is faster there (see `_large`).
    Skipping: `_visible_blocks` marks, per row and block pair, whether any query of the query block may see any key
    of the key block (causal by slot and same-segment tests on per-block segment-id ranges; exact for rows whose
    segment ids do not decrease, a superset otherwise, never missing a visible pair). Forward and backward loop
    (`fori_loop` with a traced trip count) over the list of marked (row, query block, key block) triples only, so a
    packed row of short sequences costs about sum_i L_i * block instead of T * S, and padding blocks cost nothing.
    Forward: online softmax (running max m, running sum l, fp32 accumulator), saving the output and the per-row
    logsumexp. Backward (FlashAttention-2): D = rowsum(dO * O); per pair P = exp(S - lse), dV += P^T dO,
    dS = P * (dO V^T - D), dQ += dS K scale, dK += dS^T Q scale, all accumulated in fp32.
    Matmuls accumulate in fp32 with operands in the input dtype (probabilities and dS cast to it, as einsum's
    probabilities are), except on CPU, where bf16 / fp16 blocks are multiplied in fp32. Rows with no visible key get
    the mean of the S values (einsum's convention; gradient to v alone). Under `jax.vmap`, vmapped axes are folded
    into the row axis (`_fold_vmap`), so the loops see one flat batch and skipping still happens per row.
    Not tuned for multi-device programs: the loops slice rows by a traced index, so under a jit whose batch axis is
    sharded XLA gathers the rows onto each device (correct; use shard_map around the model to keep rows local)."""
    B, T, H, Dh = q.shape
    S = k.shape[1]
    default = _BLOCK_CPU if _platform() == "cpu" else _BLOCK
    bq, bk = _block_size(T, block_q or default), _block_size(S, block_k or default)
    Tp, Sp = -(-T // bq) * bq, -(-S // bk) * bk
    qs, ks = q_segment_ids.astype(jnp.int32), kv_segment_ids.astype(jnp.int32)
    if Tp != T:
        q = jnp.pad(q, ((0, 0), (0, Tp - T), (0, 0), (0, 0)))  # [B, Tp, H, Dh]
        qs = jnp.pad(qs, ((0, 0), (0, Tp - T)))  # padding queries: segment 0
    if Sp != S:
        k = jnp.pad(k, ((0, 0), (0, Sp - S), (0, 0), (0, 0)))  # [B, Sp, K, Dh]
        v = jnp.pad(v, ((0, 0), (0, Sp - S), (0, 0), (0, 0)))
        ks = jnp.pad(ks, ((0, 0), (0, Sp - S)))  # invisible keys
    off = jnp.broadcast_to(jnp.asarray(q_offset, jnp.int32), (B,))  # [B]: one slot offset per row (folds under vmap)
    # XLA:CPU has no bf16 x bf16 -> fp32 dot in every layout (nor faster bf16 arithmetic): fp32 operands there
    mm = "float32" if _platform() == "cpu" else jnp.dtype(q.dtype).name
    out = _flash_blockwise(bq, bk, S, float(Dh ** -0.5), mm)(q, k, v, qs, ks, off)  # [B, Tp, H, Dh]
    return out[:, :T]


def _visible_blocks(q_segment_ids, kv_segment_ids, q_offset, bq: int, bk: int) -> Array:
    """bool [B, T/bq, S/bk]: False only where no query of the query block can see a key of the key block.

    A block pair is kept iff (1) the first non-padding key slot of the key block is <= the last non-padding query slot
    of the query block (causality; q_offset [B] or a scalar) and (2) the ranges [min, max] of the non-zero segment
    ids of the two blocks overlap. Exact when segment ids do not decrease along a row (packed rows), conservative
    (may keep a hidden pair) otherwise."""
    B, T = q_segment_ids.shape
    S = kv_segment_ids.shape[1]
    big = jnp.iinfo(jnp.int32).max
    qs = q_segment_ids.astype(jnp.int32).reshape(B, T // bq, bq)
    ks = kv_segment_ids.astype(jnp.int32).reshape(B, S // bk, bk)
    off = jnp.broadcast_to(jnp.asarray(q_offset, jnp.int32), (B,))
    q_slot = off[:, None, None] + jnp.arange(T, dtype=jnp.int32).reshape(1, T // bq, bq)  # [B, nq, bq]
    k_slot = jnp.arange(S, dtype=jnp.int32).reshape(1, S // bk, bk)  # [1, nk, bk]
    qv, kv = qs != 0, ks != 0
    q_min = jnp.min(jnp.where(qv, qs, big), -1)  # [B, nq]; big when the block is all padding
    q_max = jnp.max(jnp.where(qv, qs, -big), -1)
    q_last = jnp.max(jnp.where(qv, q_slot, -big), -1)  # last slot of a non-padding query
    k_min = jnp.min(jnp.where(kv, ks, big), -1)  # [B, nk]
    k_max = jnp.max(jnp.where(kv, ks, -big), -1)
    k_first = jnp.min(jnp.where(kv, k_slot, big), -1)  # first slot of a non-padding key
    return ((k_first[:, None, :] <= q_last[:, :, None])
            & (q_min[:, :, None] <= k_max[:, None, :]) & (k_min[:, None, :] <= q_max[:, :, None]))


def _block_pairs(qs, ks, off, bq: int, bk: int):
    """(flat indices b * nq * nk + i * nk + j of the visible block pairs, padded with 0, [B * nq * nk] int32; their
    number, int32 scalar)."""
    vis = _visible_blocks(qs, ks, off, bq, bk).reshape(-1)
    idx = jnp.nonzero(vis, size=vis.shape[0], fill_value=0)[0].astype(jnp.int32)
    return idx, jnp.sum(vis, dtype=jnp.int32)


class _Pair:
    """One (row b, query block i, key block j) pair: its operands sliced from the head-major arrays
    q [B, K, G, Tp, Dh], k / v [B, K, Sp, Dh], its mask [bq, bk] and its masked fp32 scores [K, G, bq, bk]."""

    def __init__(self, flat, q, k, v, qs, ks, off, bq, bk, nq, nk, scale, mm, transposed=False):
        self.b, self.i, self.j = flat // (nq * nk), (flat // nk) % nq, flat % nk
        self.t0, self.s0 = self.i * bq, self.j * bk
        self.bq, self.bk = bq, bk
        self.q = self.rows(q).astype(mm)  # [K, G, bq, Dh]
        self.k, self.v = self.keys(k).astype(mm), self.keys(v).astype(mm)  # [K, bk, Dh]
        q_seg = jax.lax.dynamic_slice(qs, (self.b, self.t0), (1, bq))[0]  # [bq]
        k_seg = jax.lax.dynamic_slice(ks, (self.b, self.s0), (1, bk))[0]  # [bk]
        q_slot = off[self.b] + self.t0 + jnp.arange(bq, dtype=jnp.int32)
        k_slot = self.s0 + jnp.arange(bk, dtype=jnp.int32)
        self.mask = ((k_slot[None, :] <= q_slot[:, None]) & (k_seg[None, :] == q_seg[:, None])
                     & (k_seg[None, :] != 0))  # [bq, bk]
        if transposed:  # key-major scores [K, bk, G, bq]
            s = jnp.einsum("ksd,kgtd->ksgt", self.k, self.q, preferred_element_type=jnp.float32) * scale
            self.scores = jnp.where(self.mask.T[None, :, None, :], s, _MASKED)
        else:
            s = jnp.einsum("kgtd,ksd->kgts", self.q, self.k, preferred_element_type=jnp.float32) * scale
            self.scores = jnp.where(self.mask, s, _MASKED)  # [K, G, bq, bk] fp32

    def rows(self, x):  # x[b, ..., t0 : t0 + bq, (Dh)] of a [B, K, G, Tp(, Dh)] array
        return _take(x, self.b, 3, self.t0, self.bq)

    def keys(self, x):  # x[b, :, s0 : s0 + bk, :] of a [B, K, Sp, Dh] array
        return _take(x, self.b, 2, self.s0, self.bk)


def _take(x, b, axis, start, n):
    """x[b] sliced to [start, start + n) along `axis` of x."""
    idx = [jnp.int32(0)] * x.ndim
    idx[0], idx[axis] = b, start
    size = list(x.shape)
    size[0], size[axis] = 1, n
    return jax.lax.dynamic_slice(x, idx, size)[0]


def _put(x, block, b, axis, start):
    """x[b] with block written at `start` along `axis` of x."""
    idx = [jnp.int32(0)] * x.ndim
    idx[0], idx[axis] = b, start
    return jax.lax.dynamic_update_slice(x, block[None].astype(x.dtype), idx)


def _heads_major(q, k, v):
    """q [B, Tp, H, Dh] -> [B, K, G, Tp, Dh]; k, v [B, Sp, K, Dh] -> [B, K, Sp, Dh] (the loops' layout: every block
    product is then a plain batched matmul over the K kv heads, and no block is transposed inside the loops)."""
    B, Tp, H, Dh = q.shape
    K = k.shape[2]
    qh = jnp.transpose(q.reshape(B, Tp, K, H // K, Dh), (0, 2, 3, 1, 4))
    return qh, jnp.transpose(k, (0, 2, 1, 3)), jnp.transpose(v, (0, 2, 1, 3))


def _blockwise_fwd_kernel(q, k, v, qs, ks, off, *, bq, bk, s_len, scale, mm):
    """(out [B, Tp, H, Dh] in q's dtype, lse [B, K, G, Tp] fp32, +inf on rows with no visible key).

    The pairs come sorted by (row, query block), so the online-softmax state of the current query block is carried
    at block size and reset where a new query block starts; every step writes the block's output so far (the last
    write of a block is final). The whole-size arrays are only written to, never read inside the loop, which keeps
    XLA from copying them each step."""
    B, Tp, H, Dh = q.shape
    Sp, K = k.shape[1], k.shape[2]
    G, nq, nk = H // K, Tp // bq, Sp // bk
    pairs, n = _block_pairs(qs, ks, off, bq, bk)
    qh, kh, vh = _heads_major(q, k, v)
    v_mean = jnp.mean(vh[:, :, :s_len].astype(jnp.float32), axis=2)  # [B, K, Dh]: einsum's value for unseeing rows
    block0 = (jnp.zeros((K, G, bq, Dh), jnp.float32), jnp.full((K, G, bq), _MASKED, jnp.float32),
              jnp.zeros((K, G, bq), jnp.float32))

    def body(c, carry):
        out, lse, block = carry  # fp32 [B, K, G, Tp, Dh], [B, K, G, Tp]; (acc, m, l) of the current query block
        flat = pairs[c]
        p = _Pair(flat, qh, kh, vh, qs, ks, off, bq, bk, nq, nk, scale, mm)
        new_block = (c == 0) | (flat // nk != pairs[jnp.maximum(c - 1, 0)] // nk)
        acc, m_old, l_old = (jnp.where(new_block, x0, x) for x0, x in zip(block0, block))
        m_new = jnp.maximum(m_old, jnp.max(p.scores, -1))  # [K, G, bq]
        # Masked scores are _MASKED: exp(_MASKED - m_new) is 0 once a row has seen a key (m_new > _MASKED). Before
        # that the row's l and acc collect junk, wiped by alpha = exp(_MASKED - m_new) = 0 at its first visible key;
        # a row that never sees one keeps m == _MASKED and gets einsum's mean(v).
        probs = jnp.exp(p.scores - m_new[..., None])  # [K, G, bq, bk]
        alpha = jnp.exp(m_old - m_new)
        l_new = alpha * l_old + jnp.sum(probs, -1)
        pv = jnp.einsum("kgts,ksd->kgtd", probs.astype(mm), p.v, preferred_element_type=jnp.float32)
        acc = alpha[..., None] * acc + pv  # [K, G, bq, Dh]
        seen = m_new > 0.5 * _MASKED  # then l_new >= 1
        l_safe = jnp.where(seen, l_new, 1.0)
        o = jnp.where(seen[..., None], acc / l_safe[..., None], v_mean[p.b][:, None, None, :])
        out = _put(out, o, p.b, 3, p.t0)
        lse = _put(lse, jnp.where(seen, m_new + jnp.log(l_safe), jnp.inf), p.b, 3, p.t0)
        return out, lse, (acc, m_new, l_new)

    init = (jnp.broadcast_to(v_mean[:, :, None, None, :], (B, K, G, Tp, Dh)),  # query blocks that see nothing
            jnp.full((B, K, G, Tp), jnp.inf, jnp.float32), block0)
    out, lse, _ = jax.lax.fori_loop(0, n, body, init)
    out = jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(B, Tp, H, Dh)
    return out.astype(q.dtype), lse


def _blockwise_bwd_kernel(q, k, v, qs, ks, off, out, lse, g, *, bq, bk, s_len, scale, mm):
    """(dq, dk, dv) in the input dtypes; fp32 accumulation."""
    B, Tp, H, Dh = q.shape
    Sp, K = k.shape[1], k.shape[2]
    G, nq, nk = H // K, Tp // bq, Sp // bk
    pairs, n = _block_pairs(qs, ks, off, bq, bk)
    qh, kh, vh = _heads_major(q, k, v)
    gh = jnp.transpose(g.astype(q.dtype).reshape(B, Tp, K, G, Dh), (0, 2, 3, 1, 4))  # [B, K, G, Tp, Dh]
    oh = jnp.transpose(out.reshape(B, Tp, K, G, Dh), (0, 2, 3, 1, 4))
    delta = jnp.sum(gh.astype(jnp.float32) * oh.astype(jnp.float32), -1)  # [B, K, G, Tp]

    def body(c, carry):
        dq, dk, dv = carry  # fp32 [B, K, Dh, G, Tp], [B, K, Sp, Dh], [B, K, Sp, Dh]
        p = _Pair(pairs[c], qh, kh, vh, qs, ks, off, bq, bk, nq, nk, scale, mm, transposed=True)
        g_b = p.rows(gh).astype(mm)  # [K, G, bq, Dh]
        # key-major [K, bk, G, bq] blocks: dV and dK are then plain matmuls, and only dQ's contracts a leading axis
        probs = jnp.exp(p.scores - p.rows(lse)[:, None])  # [K, bk, G, bq]; 0 where masked (lse finite or +inf)
        dv_b = jnp.einsum("ksgt,kgtd->ksd", probs.astype(mm), g_b, preferred_element_type=jnp.float32)
        dp = jnp.einsum("ksd,kgtd->ksgt", p.v, g_b, preferred_element_type=jnp.float32)
        ds = (probs * (dp - p.rows(delta)[:, None])).astype(mm)  # [K, bk, G, bq]
        dk_b = jnp.einsum("ksgt,kgtd->ksd", ds, p.q, preferred_element_type=jnp.float32) * scale
        # dQ transposed ([K, Dh, G, bq]): contracting the leading key axis of dS then transposes only the K block
        dq_b = jnp.einsum("ksgt,ksd->kdgt", ds, p.k, preferred_element_type=jnp.float32) * scale
        return (_put(dq, _take(dq, p.b, 4, p.t0, bq) + dq_b, p.b, 4, p.t0),
                _put(dk, p.keys(dk) + dk_b, p.b, 2, p.s0),
                _put(dv, p.keys(dv) + dv_b, p.b, 2, p.s0))

    init = (jnp.zeros((B, K, Dh, G, Tp), jnp.float32), jnp.zeros((B, K, Sp, Dh), jnp.float32),
            jnp.zeros((B, K, Sp, Dh), jnp.float32))
    dq, dk, dv = jax.lax.fori_loop(0, n, body, init)
    # rows with no visible key output mean(v): their cotangent reaches every one of the S (unpadded) values
    unseen = jnp.sum(jnp.where(jnp.isinf(lse)[..., None], gh.astype(jnp.float32), 0.0), axis=(2, 3))  # [B, K, Dh]
    dv = dv.at[:, :, :s_len].add(unseen[:, :, None] / s_len)
    dq = jnp.transpose(dq, (0, 4, 1, 3, 2)).reshape(B, Tp, H, Dh)
    return dq.astype(q.dtype), jnp.transpose(dk, (0, 2, 1, 3)).astype(k.dtype), \
        jnp.transpose(dv, (0, 2, 1, 3)).astype(v.dtype)


@functools.lru_cache(maxsize=None)
def _flash_blockwise(bq: int, bk: int, s_len: int, scale: float, mm: str):
    """(q [B,Tp,H,Dh], k [B,Sp,K,Dh], v, q_segment_ids [B,Tp], kv_segment_ids [B,Sp], q_offset [B]) -> [B,Tp,H,Dh],
    differentiable in q, k, v, with vmapped axes folded into B (see `_blockwise`)."""
    kw = dict(bq=bq, bk=bk, s_len=s_len, scale=scale, mm=jnp.dtype(mm))
    fwd_folded = _fold_vmap(functools.partial(_blockwise_fwd_kernel, **kw))
    bwd_folded = _fold_vmap(functools.partial(_blockwise_bwd_kernel, **kw))

    @jax.custom_vjp
    def flash(q, k, v, qs, ks, off):
        return fwd_folded(q, k, v, qs, ks, off)[0]

    def flash_fwd(q, k, v, qs, ks, off):
        out, lse = fwd_folded(q, k, v, qs, ks, off)
        return out, (q, k, v, qs, ks, off, out, lse)

    def flash_bwd(res, g):
        return (*bwd_folded(*res, g), None, None, None)

    flash.defvjp(flash_fwd, flash_bwd)
    return flash


# ---------------------------------------------------------------------- splash (TPU)
_SPLASH_LANES = 128  # splash block sizes must be multiples of 128


def _splash(q, k, v, q_segment_ids, kv_segment_ids, q_offset, *, interpret: bool = False, block: int | None = None):
    """TPU splash attention: a static causal mask and SegmentIds, GQA through the multi-head kernel (query head h
    reads kv head h // G). No-cache case only (q_offset == 0, T == S). q is pre-scaled by Dh**-0.5 (splash does not
    scale). T is padded to a multiple of 128 with query segment -1 / key segment -2 (seen by nothing) and cut off.
    Splash compares segment ids only, so a padding query (segment 0) attends causally to padding keys: finite, unused.
    interpret=True runs the Pallas kernel in interpret mode (CPU tests); `block` overrides the tile size."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    assert _is_static_zero(q_offset) and q.shape[1] == k.shape[1], "splash: no-cache case only"
    B, T, H, Dh = q.shape
    Tp = -(-T // _SPLASH_LANES) * _SPLASH_LANES
    qs, ks = q_segment_ids.astype(jnp.int32), kv_segment_ids.astype(jnp.int32)
    if Tp != T:
        pad = ((0, 0), (0, Tp - T), (0, 0), (0, 0))
        q, k, v = jnp.pad(q, pad), jnp.pad(k, pad), jnp.pad(v, pad)
        qs = jnp.pad(qs, ((0, 0), (0, Tp - T)), constant_values=-1)
        ks = jnp.pad(ks, ((0, 0), (0, Tp - T)), constant_values=-2)
    if block is None:
        block = next(b for b in (512, 256, 128) if Tp % b == 0)
    kernel = _splash_kernel(H, Tp, block, interpret)
    qh = jnp.swapaxes((q.astype(jnp.float32) * Dh ** -0.5).astype(q.dtype), 1, 2)  # [B, H, Tp, Dh]
    kh, vh = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # [B, K, Tp, Dh]
    out = jax.vmap(kernel)(qh, kh, vh, sa.SegmentIds(q=qs, kv=ks))  # [B, H, Tp, Dh]
    return jnp.swapaxes(out, 1, 2)[:, :T].astype(q.dtype)  # [B, T, H, Dh]


def _splash_kernel(num_heads: int, seq_len: int, block: int, interpret: bool):
    """The splash kernel of a causal mask, built in the trace that calls it. Not cached across traces: its mask-info
    arrays are arrays of the trace that builds them, and Flax's layer scan traces its body first in a partial-eval
    pass where even `jax.ensure_compile_time_eval` yields tracers, so a cached kernel leaked them into the real trace
    (UnexpectedTracerError whenever splash ran inside the model; caught by exporting for TPU,
    tests/test_export.py). The mask processing is host numpy over (T / block)^2 blocks, once per trace."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    mask = sa.MultiHeadMask([sa.CausalMask((seq_len, seq_len)) for _ in range(num_heads)])
    sizes = sa.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                          block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    extra = {"interpret": True} if interpret else {}
    return sa.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, **extra)


_BACKENDS = {"einsum": _einsum, "xla": _xla, "cudnn": _cudnn, "splash": _splash, "blockwise": _blockwise}

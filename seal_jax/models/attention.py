"""Attention backends behind one function, `attend`.

Shape letters (as in transformer.py): B batch, T query length, S key length (T, or the KV-cache length), H query
heads, K kv heads, G = H // K query heads per kv head (GQA), Dh head dim.

    attend(q [B, T, H, Dh], k [B, S, K, Dh], v [B, S, K, Dh],
           q_segment_ids [B, T], kv_segment_ids [B, S], q_offset, implementation) -> [B, T, H, Dh]

Masking is by slot and segment: query t sits at key slot `q_offset + t` (0 without a cache; the cache index with
one) and sees key s iff s <= q_offset + t, kv_segment_ids[s] == q_segment_ids[t] and kv_segment_ids[s] != 0 (0 marks
padding and empty cache slots). One mask thus covers left/right padding, packed rows and cached decode. `q_offset`
is a python int or a traced int32 scalar. Query head h uses kv head h // G.

Rows with no visible key (padding queries) get finite values that callers must not use ("einsum" and "xla" give
the mean of all S values there, "cudnn" and "splash" other finite values). Every other row agrees across backends to
rounding.

Implementations (`ModelConfig.attention`):
  einsum  explicit fp32 scores [B, K, G, T, S]; the reference and the CPU path. Memory O(B*H*T*S) fp32.
  xla     `jax.nn.dot_product_attention(implementation="xla")` with the boolean mask (same algorithm as einsum).
  cudnn   cuDNN flash attention through `jax.nn.dot_product_attention(implementation="cudnn")`; see `_cudnn`.
          Used on CUDA GPUs (compute capability >= 8.0) for bf16/fp16 with a supported head dim and T > 1;
          otherwise the call falls back (see `select_implementation`).
  splash  TPU splash attention (Pallas) with SegmentIds and a causal mask; only without a cache offset
          (q_offset a python 0 and T == S, i.e. training and slot-0 prefill without a cache); see `_splash`.
  auto    einsum on CPU; cudnn on GPU (falling back to xla); splash on TPU when the program runs on one device
          (falling back to xla).
A backend that cannot serve a call (wrong platform, dtype, shape, cache offset) falls back to "einsum" on CPU and
"xla" elsewhere; `select_implementation` says which backend a call gets (`_select` also gives the reason).
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


def _select(implementation: str, q, k, q_offset, platform: str) -> tuple[str, str]:
    """(backend, why it is not the one asked for; "" when it is)."""
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {implementation!r} "
                         f"(allowed: {', '.join(ATTENTION_IMPLEMENTATIONS)})")
    fallback = "einsum" if platform == "cpu" else "xla"
    if implementation in ("einsum", "xla"):
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
            return "einsum", ""
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


@functools.lru_cache(maxsize=64)
def _splash_kernel(num_heads: int, seq_len: int, block: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    mask = sa.MultiHeadMask([sa.CausalMask((seq_len, seq_len)) for _ in range(num_heads)])
    sizes = sa.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                          block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    extra = {"interpret": True} if interpret else {}
    with jax.ensure_compile_time_eval():  # concrete mask-info arrays, so the cached kernel outlives this trace
        return sa.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, **extra)


_BACKENDS = {"einsum": _einsum, "xla": _xla, "cudnn": _cudnn, "splash": _splash}

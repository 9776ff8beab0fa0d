"""Attention backends (seal_jax/models/attention.py) against the einsum reference, in fp32 on CPU.

Run on CPU: "xla"; "blockwise" (small blocks, so that every case spans many block pairs); the cuDNN path's own code (mask, even-length padding, causal flag, vmap folding, custom VJP) with
the XLA kernel in place of cuDNN; splash attention in Pallas interpret mode. The real cuDNN kernels need a CUDA GPU:
here they are only lowered for CUDA (custom calls present, forward and backward, under vmap), not run.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seal_jax
from seal_jax.models import attention as attn
from seal_jax.models.config import ConfigError, ModelConfig

pytestmark = pytest.mark.slow(minutes=2.5)  # its time in a parallel run: runs first, longest first (tests/conftest.py)

TOL = 2e-5  # fp32: measured max errors are <= 5e-7 (forward) and <= 4e-6 (gradients)


@pytest.fixture(autouse=True)
def _full_fp32_matmuls():
    with jax.default_matmul_precision("highest"):  # no TF32 where these tests run on a GPU
        yield


def _case(name: str, seed: int = 0):
    """(q, k, v, q_segment_ids, kv_segment_ids, q_offset) for one masking pattern."""
    rng = np.random.default_rng(seed)
    B, H, K, Dh = 2, 4, 2, 16
    q_offset, S = 0, None
    if name == "packed":  # several segments per row, a padded tail on row 1
        T = 40
        qs = np.array([[1] * 10 + [2] * 17 + [3] * 13, [1] * 5 + [2] * 5 + [3] * 20 + [0] * 10], np.int32)
        kvs = qs
    elif name == "long_packed":  # several splash tiles (T padded to 384 = 3 x 128), segments across tile borders
        T = 300
        qs = np.array([[1] * 100 + [2] * 150 + [3] * 50, [0] * 30 + [1] * 200 + [2] * 60 + [0] * 10], np.int32)
        kvs = qs
    elif name == "left_pad":
        T = 24
        qs = np.array([[0] * 7 + [1] * 17, [0] * 1 + [1] * 23], np.int32)
        kvs = qs
    elif name == "right_pad":
        T = 24
        qs = np.array([[1] * 15 + [0] * 9, [1] * 23 + [0] * 1], np.int32)
        kvs = qs
    elif name == "mha":  # H == K, odd length
        T, K = 33, 4
        qs = np.array([[1] * 33, [1] * 20 + [2] * 13], np.int32)
        kvs = qs
    elif name == "mqa":  # K == 1
        T, K = 32, 1
        qs = np.array([[1] * 32, [0] * 4 + [1] * 28], np.int32)
        kvs = qs
    elif name == "unmasked_pad_queries":  # pad tokens are segment-1 queries but invisible keys (SEAL trainer)
        T = 24
        qs = np.array([[1] * 24, [1] * 24], np.int32)
        kvs = np.array([[1] * 16 + [0] * 8, [1] * 24], np.int32)
    elif name == "many_segments":  # short segments (1-13 tokens) across 8-slot blocks; left / right padding; T % 8 != 0
        T = 100
        lens0, lens1 = [1, 5, 13, 2, 9, 3, 11, 7, 6, 1, 12, 4, 8, 10], [3, 6, 1, 12, 7, 2, 13, 5, 9, 4, 8]
        row0 = np.concatenate([[0] * 4] + [[i + 1] * n for i, n in enumerate(lens0)])
        row1 = np.concatenate([[i + 1] * n for i, n in enumerate(lens1)])
        qs = np.stack([np.pad(row0, (0, T - len(row0))), np.pad(row1, (0, T - len(row1)))]).astype(np.int32)
        kvs = qs
    elif name == "decode":  # T=1 at slot 9 of a 16-slot cache (left-padded prompt, empty tail)
        T, S, q_offset = 1, 16, 9
        kvs = np.array([[0] * 3 + [1] * 7 + [0] * 6, [1] * 10 + [0] * 6], np.int32)
        qs = np.ones((B, T), np.int32)
    elif name == "chunk":  # a 5-token chunk at slot 6 of a 20-slot cache
        T, S, q_offset = 5, 20, 6
        kvs = np.array([[0] * 2 + [1] * 9 + [0] * 9, [1] * 11 + [0] * 9], np.int32)
        qs = np.ones((B, T), np.int32)
    else:
        raise KeyError(name)
    S = T if S is None else S
    q = rng.standard_normal((B, T, H, Dh), np.float32)
    k = rng.standard_normal((B, S, K, Dh), np.float32)
    v = rng.standard_normal((B, S, K, Dh), np.float32)
    return jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(qs), jnp.asarray(kvs), q_offset


CASES = ["packed", "long_packed", "many_segments", "left_pad", "right_pad", "mha", "mqa", "unmasked_pad_queries",
         "decode", "chunk"]
NO_CACHE = [c for c in CASES if c not in ("decode", "chunk")]


def _splash_interpret(*args):
    return attn._splash(*args, interpret=True, block=128)


BACKENDS = {
    "xla": functools.partial(attn.attend, implementation="xla"),
    # the cuDNN path's wrapping around the XLA kernel (cuDNN itself cannot run on CPU)
    "cudnn_wrapper": functools.partial(attn._cudnn, impl="xla"),
    # query blocks of 8 and key blocks of 16 slots (padded where T or S is not a multiple); default blocks below
    "blockwise": functools.partial(attn._blockwise, block_q=8, block_k=16),
    "blockwise_default_blocks": functools.partial(attn.attend, implementation="blockwise"),
}


def _visible(qs, kvs, q_offset):
    """float [B, T]: 1 where the query sees at least one key (rows where every backend must agree)."""
    return attn.attention_mask(qs, kvs, q_offset).any(-1).astype(jnp.float32)


def _loss(fn, qs, kvs, q_offset, w, q, k, v):
    out = fn(q, k, v, qs, kvs, q_offset)
    return jnp.sum(out * w * _visible(qs, kvs, q_offset)[:, :, None, None])


def _run(fn, case):
    """(output, (dq, dk, dv) of a weighted sum over rows with a visible key) of one backend on one case."""
    q, k, v, qs, kvs, off = _case(case)
    w = jax.random.normal(jax.random.PRNGKey(1), q.shape)
    out = jax.jit(lambda q, k, v: fn(q, k, v, qs, kvs, off))(q, k, v)
    grads = jax.jit(jax.grad(functools.partial(_loss, fn, qs, kvs, off, w), argnums=(0, 1, 2)))(q, k, v)
    return out, grads


_reference = functools.lru_cache(maxsize=None)(functools.partial(_run, attn._einsum))


def _compare(fn, case, all_rows: bool):
    q, k, v, qs, kvs, off = _case(case)
    (ref, g_ref), (out, g) = _reference(case), _run(fn, case)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert bool(jnp.isfinite(out).all())
    vis = _visible(qs, kvs, off)[:, :, None, None]
    fwd = float(jnp.max(jnp.abs(out - ref) * (1.0 if all_rows else vis)))
    grad = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(g, g_ref))
    return fwd, grad


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_backend_equals_einsum(backend, case):
    fwd, grad = _compare(BACKENDS[backend], case, all_rows=True)
    print(f"{backend} {case}: forward max err {fwd:.2e}, grad max err {grad:.2e}")
    assert fwd < TOL and grad < TOL


@pytest.mark.parametrize("case", NO_CACHE)
def test_splash_interpret_equals_einsum(case):
    # padding queries (no visible key) differ by design (see attention.py); every other row must agree
    fwd, grad = _compare(_splash_interpret, case, all_rows=False)
    print(f"splash(interpret) {case}: forward max err {fwd:.2e}, grad max err {grad:.2e}")
    assert fwd < TOL and grad < TOL


@pytest.mark.parametrize("fn", [BACKENDS["cudnn_wrapper"], _splash_interpret, BACKENDS["blockwise"]],
                         ids=["cudnn_wrapper", "splash", "blockwise"])
def test_vmap_of_grad(fn):
    """The inner loop vmaps value_and_grad over adapters: batched inputs, including an unbatched mask operand."""
    q, k, v, qs, kvs, off = _case("packed")
    A = 3
    qa, ka, va = (jnp.stack([x * (1 + 0.1 * i) for i in range(A)]) for x in (q, k, v))
    w = jax.random.normal(jax.random.PRNGKey(2), q.shape)

    def run(f):
        loss = functools.partial(_loss, f, qs, kvs, off, w)
        return jax.jit(jax.vmap(jax.value_and_grad(loss, argnums=(0, 1, 2))))(qa, ka, va)

    (l_ref, g_ref), (l, g) = run(attn._einsum), run(fn)
    assert float(jnp.max(jnp.abs(l - l_ref))) < 1e-3
    assert max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(g, g_ref)) < TOL


def test_selection():
    sel = attn.select_implementation
    q = jax.ShapeDtypeStruct((2, 64, 8, 64), jnp.bfloat16)
    k = jax.ShapeDtypeStruct((2, 64, 2, 64), jnp.bfloat16)
    kc = jax.ShapeDtypeStruct((2, 256, 2, 64), jnp.bfloat16)  # a KV cache
    assert sel("auto", q, k, 0, "cpu") == "einsum"
    for name in ("einsum", "xla"):
        assert sel(name, q, k, 0, "tpu") == name
    # off their platform, explicit cudnn / splash fall back (einsum on CPU, xla elsewhere)
    assert sel("cudnn", q, k, 0, "cpu") == "einsum" and sel("splash", q, k, 0, "cpu") == "einsum"
    assert sel("cudnn", q, k, 0, "tpu") == "xla" and sel("splash", q, k, 0, "gpu") == "xla"
    # TPU: splash for the no-cache case only
    assert sel("splash", q, k, 0, "tpu") == "splash"
    assert sel("splash", q, kc, jnp.int32(5), "tpu") == "xla"
    assert sel("splash", q, k, jnp.int32(0), "tpu") == "xla"  # a traced offset cannot place a static mask
    if jax.device_count() == 1:
        assert sel("auto", q, k, 0, "tpu") == "splash"
    with pytest.raises(ValueError, match="unknown attention implementation"):
        sel("flash", q, k, 0, "cpu")


def test_selection_blockwise():
    """blockwise: explicit anywhere; auto on CPU for large calls (T >= 32 and T * S > 256^2, see attention._large);
    the fallback of cudnn / splash for large calls (T * S > 2048^2 on GPU / TPU)."""
    sel = attn.select_implementation

    def shapes(T, S, dtype=jnp.bfloat16):
        return jax.ShapeDtypeStruct((4, T, 8, 64), dtype), jax.ShapeDtypeStruct((4, S, 2, 64), dtype)

    for platform in ("cpu", "gpu", "tpu"):
        assert sel("blockwise", *shapes(8, 8), 0, platform) == "blockwise"
    assert sel("auto", *shapes(256, 256), 0, "cpu") == "einsum"  # one 256 x 256 block: einsum's memory anyway
    assert sel("auto", *shapes(256, 264), 0, "cpu") == "blockwise"
    assert sel("auto", *shapes(64, 8192), jnp.int32(100), "cpu") == "blockwise"  # a prefill chunk into a cache
    assert sel("auto", *shapes(1, 1 << 20), jnp.int32(5), "cpu") == "einsum"  # decode step
    assert sel("auto", *shapes(16, 1 << 20), jnp.int32(5), "cpu") == "einsum"  # short chunk
    assert sel("cudnn", *shapes(512, 512), 0, "cpu") == "blockwise"
    assert sel("splash", *shapes(2048, 2056), 0, "gpu") == "blockwise"
    assert sel("splash", *shapes(2048, 2048), 0, "gpu") == "xla"
    assert sel("splash", *shapes(2048, 4096), jnp.int32(7), "tpu") == "blockwise"  # cache offset: no splash
    assert sel("splash", *shapes(256, 4096), jnp.int32(7), "tpu") == "xla"


def test_selection_gpu(monkeypatch):
    sel = attn.select_implementation
    q = jax.ShapeDtypeStruct((2, 64, 8, 64), jnp.bfloat16)
    k = jax.ShapeDtypeStruct((2, 64, 2, 64), jnp.bfloat16)
    kc = jax.ShapeDtypeStruct((2, 256, 2, 64), jnp.bfloat16)
    monkeypatch.setattr(attn, "_cuda_capability", lambda: (9, 0))
    assert sel("auto", q, k, 0, "gpu") == "cudnn" and sel("cudnn", q, k, 0, "gpu") == "cudnn"
    assert sel("auto", q, kc, jnp.int32(7), "gpu") == "cudnn"  # prefill / chunk into a cache
    assert sel("auto", jax.ShapeDtypeStruct((2, 1, 8, 64), jnp.bfloat16), kc, jnp.int32(7), "gpu") == "xla"
    assert sel("auto", jax.ShapeDtypeStruct((2, 64, 8, 64), jnp.float32), k, 0, "gpu") == "xla"
    assert sel("auto", jax.ShapeDtypeStruct((2, 64, 8, 12), jnp.bfloat16), k, 0, "gpu") == "xla"  # Dh % 8
    assert sel("auto", jax.ShapeDtypeStruct((2, 64, 8, 256), jnp.bfloat16), k, 0, "gpu") == "cudnn"
    monkeypatch.setattr(attn, "_cuda_capability", lambda: (8, 0))
    assert sel("auto", jax.ShapeDtypeStruct((2, 64, 8, 256), jnp.bfloat16), k, 0, "gpu") == "xla"  # Dh > 128
    monkeypatch.setattr(attn, "_cuda_capability", lambda: (7, 5))
    assert sel("auto", q, k, 0, "gpu") == "xla"
    monkeypatch.setattr(attn, "_cuda_capability", lambda: None)  # e.g. ROCm
    assert sel("cudnn", q, k, 0, "gpu") == "xla"
    # large calls cuDNN cannot serve fall back to blockwise (memory), small ones to xla
    big_q = jax.ShapeDtypeStruct((2, 4096, 8, 64), jnp.float32)
    big_k = jax.ShapeDtypeStruct((2, 4096, 2, 64), jnp.float32)
    monkeypatch.setattr(attn, "_cuda_capability", lambda: (9, 0))
    assert sel("auto", big_q, big_k, 0, "gpu") == "blockwise"  # fp32
    bf16 = [jax.ShapeDtypeStruct(x.shape, jnp.bfloat16) for x in (big_q, big_k)]
    assert sel("auto", *bf16, 0, "gpu") == "cudnn"
    assert sel("auto", jax.ShapeDtypeStruct((2, 1, 8, 64), jnp.float32), big_k, jnp.int32(9), "gpu") == "xla"


def _fake_cuda(monkeypatch):
    """Let the cuDNN path trace and lower for CUDA on a CPU-only machine (private JAX module; skip if it moved)."""
    fa = pytest.importorskip("jax._src.cudnn.fused_attention_stablehlo")
    if not hasattr(fa, "check_cudnn_version"):
        pytest.skip("jax's cuDNN module changed")
    monkeypatch.setattr(fa, "check_cudnn_version", lambda: 91000)
    monkeypatch.setattr(attn, "_platform", lambda: "gpu")
    monkeypatch.setattr(attn, "_cuda_capability", lambda: (9, 0))


def _cuda_hlo(fn, *args) -> str:
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


@pytest.mark.parametrize("case", ["packed", "mha", "chunk"])
def test_cudnn_lowers_for_cuda(monkeypatch, case):
    """Untested on a GPU here: checks that the cuDNN path traces and lowers to cuDNN's fused attention custom calls,
    forward and backward, also under vmap (the inner loop's vmap of value_and_grad over adapters)."""
    _fake_cuda(monkeypatch)
    q, k, v, qs, kvs, off = (x.astype(jnp.bfloat16) if i < 3 else x for i, x in enumerate(_case(case)))
    off = jnp.int32(off) if case == "chunk" else off
    assert attn.select_implementation("auto", q, k, off) == "cudnn"

    def loss(q, k, v):
        return jnp.sum(attn.attend(q, k, v, qs, kvs, off, "auto").astype(jnp.float32))

    fwd = _cuda_hlo(lambda q, k, v: attn.attend(q, k, v, qs, kvs, off, "cudnn"), q, k, v)
    assert "__cudnn$fmha" in fwd and "Backward" not in fwd
    # cuDNN's own causal mask only without a cache offset; with one, causality is in the mask operand alone
    assert ("CAUSAL" in fwd) == (case != "chunk")
    for fn, args in [(jax.grad(loss, argnums=(0, 1, 2)), (q, k, v)),
                     (jax.vmap(jax.grad(loss, argnums=(0, 1, 2))), tuple(jnp.stack([x, x]) for x in (q, k, v)))]:
        hlo = _cuda_hlo(fn, *args)
        assert "__cudnn$fmhaScaleBiasSoftmax" in hlo and "__cudnn$fmhaScaleBiasSoftmaxBackward" in hlo


def test_model_cudnn_lowers_for_cuda(monkeypatch):
    """The whole tiny model (bf16, layer scan, remat) with attention="cudnn", vmapped value_and_grad, for CUDA."""
    _fake_cuda(monkeypatch)
    cfg = seal_jax.get_preset("tiny-llama").replace(attention="cudnn", remat=True)
    model = seal_jax.init_model(cfg, dtype="bfloat16")
    tokens = jnp.ones((3, 2, 16), jnp.int32)
    seg = jnp.broadcast_to(jnp.array([1] * 10 + [2] * 4 + [0] * 2, jnp.int32), (3, 2, 16))
    pos = jnp.broadcast_to(jnp.arange(16, dtype=jnp.int32), (3, 2, 16))

    def loss(params, tokens, pos, seg):
        logits, _ = seal_jax.Model(cfg, params).apply(tokens, pos, seg)
        return jnp.mean(logits)

    hlo = _cuda_hlo(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0, 0)), model.params, tokens, pos, seg)
    assert "__cudnn$fmhaScaleBiasSoftmaxBackward" in hlo


def _packed_batch(vocab):
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, vocab, (3, 24)).astype(np.int32)
    seg = np.array([[1] * 10 + [2] * 14, [0] * 5 + [1] * 19, [1] * 7 + [2] * 9 + [3] * 5 + [0] * 3], np.int32)
    pos = np.zeros_like(seg)
    for b in range(3):  # positions restart at each segment
        for s in np.unique(seg[b]):
            idx = np.nonzero(seg[b] == s)[0]
            pos[b, idx] = np.arange(len(idx))
    return tokens, seg, pos


@pytest.mark.parametrize("preset", ["tiny-qwen2", "tiny-llama"])
def test_model_forward_xla_equals_einsum(preset):
    model = seal_jax.init_model(seal_jax.get_preset(preset))
    tokens, seg, pos = _packed_batch(model.config.vocab_size)
    ref = seal_jax.forward(seal_jax.Model(model.config.replace(attention="einsum"), model.params), tokens,
                           segment_ids=seg, positions=pos)
    got = seal_jax.forward(seal_jax.Model(model.config.replace(attention="xla"), model.params), tokens,
                           segment_ids=seg, positions=pos)
    err = float(jnp.max(jnp.abs(got - ref)))
    print(f"{preset} model forward xla vs einsum: max logit err {err:.2e}")
    assert err < 1e-4
    if jax.default_backend() == "cpu":
        auto = seal_jax.forward(model, tokens, segment_ids=seg, positions=pos)  # auto = einsum on CPU
        assert np.array_equal(np.asarray(auto), np.asarray(ref))


def test_model_forward_splash_interpret_equals_einsum(monkeypatch):
    """The transformer's no-cache path through splash (Pallas interpret mode standing in for the TPU kernel)."""
    model = seal_jax.init_model(seal_jax.get_preset("tiny-llama"))
    tokens, seg, pos = _packed_batch(model.config.vocab_size)
    ref = seal_jax.forward(model, tokens, segment_ids=seg, positions=pos)
    monkeypatch.setattr(attn, "_platform", lambda: "tpu")
    monkeypatch.setitem(attn._BACKENDS, "splash", functools.partial(attn._splash, interpret=True))
    got = seal_jax.forward(seal_jax.Model(model.config.replace(attention="splash"), model.params), tokens,
                           segment_ids=seg, positions=pos)
    err = float(jnp.max(jnp.abs(got - ref) * (seg > 0)[:, :, None]))  # padding positions are unspecified
    print(f"tiny-llama model forward splash(interpret) vs einsum: max logit err {err:.2e}")
    assert err < 1e-4 and bool(jnp.isfinite(got).all())


def test_config_field():
    cfg = seal_jax.get_preset("tiny-qwen2")
    assert cfg.attention == "auto"
    with pytest.raises(ConfigError,
                       match="unknown attention 'flash' .allowed: auto, einsum, xla, cudnn, splash, blockwise"):
        cfg.replace(attention="flash")
    hf = cfg.replace(attention="xla").to_hf()
    assert "attention" not in hf and hf == cfg.to_hf()  # a runtime choice: not written to config.json
    assert ModelConfig.from_hf(hf).attention == "auto"


# ---------------------------------------------------------------------- blockwise
def _blockwise_small(*args):
    return attn._blockwise(*args, block_q=8, block_k=16)


@pytest.mark.parametrize("case", ["packed", "many_segments", "chunk"])
def test_blockwise_bf16(case):
    """bf16 inputs: blockwise and einsum both against einsum in fp32; blockwise must be as close as einsum is (fp32
    accumulation; on CPU its blocks are multiplied in fp32)."""
    q, k, v, qs, kvs, off = _case(case)
    w = jax.random.normal(jax.random.PRNGKey(1), q.shape)
    ref, g_ref = _reference(case)
    errs = {}
    for name, fn in [("einsum", attn._einsum), ("blockwise", _blockwise_small)]:
        args = [x.astype(jnp.bfloat16) for x in (q, k, v)]
        out = jax.jit(lambda q, k, v: fn(q, k, v, qs, kvs, off))(*args)
        g = jax.jit(jax.grad(lambda *a: _loss(fn, qs, kvs, off, w, *a).astype(jnp.float32), argnums=(0, 1, 2)))(*args)
        assert out.dtype == jnp.bfloat16 and all(x.dtype == jnp.bfloat16 for x in g)
        errs[name] = (float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref))),
                      max(float(jnp.max(jnp.abs(a.astype(jnp.float32) - b))) for a, b in zip(g, g_ref)))
    print(f"bf16 {case}: max err vs fp32 einsum (fwd, grad): {errs}")
    for i in (0, 1):
        assert errs["blockwise"][i] <= 1.5 * errs["einsum"][i] + 2e-3
    assert errs["blockwise"][0] < 0.03 and errs["blockwise"][1] < 0.06


def test_blockwise_vmap_of_grad_per_adapter_masks():
    """vmap over adapters whose rows have their own segments and cache offsets (folded into the row axis)."""
    A, B, T, S, H, K, Dh = 3, 2, 20, 40, 4, 2, 16
    rng = np.random.default_rng(3)
    q = jnp.asarray(rng.standard_normal((A, B, T, H, Dh)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((A, B, S, K, Dh)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((A, B, S, K, Dh)), jnp.float32)
    kvs = np.zeros((A, B, S), np.int32)
    for a in range(A):
        for b in range(B):
            cut = rng.integers(1, 20)
            kvs[a, b, :cut], kvs[a, b, cut:T + 15] = 1, 2  # slots from T + 15 on: empty cache
    offs = jnp.asarray([15, 10, 5], jnp.int32)  # queries at slots off .. off + T - 1
    qs = jnp.asarray(np.take_along_axis(kvs, (np.asarray(offs)[:, None, None] + np.arange(T)), axis=2))
    kvs = jnp.asarray(kvs)
    w = jax.random.normal(jax.random.PRNGKey(2), (B, T, H, Dh))

    def run(fn):
        def loss(q, k, v, qs, kvs, off):
            return jnp.sum(fn(q, k, v, qs, kvs, off) * w)
        return jax.jit(jax.vmap(jax.value_and_grad(loss, argnums=(0, 1, 2))))(q, k, v, qs, kvs, offs)

    (l_ref, g_ref), (l, g) = run(attn._einsum), run(_blockwise_small)
    assert float(jnp.max(jnp.abs(l - l_ref))) < 1e-3
    assert max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(g, g_ref)) < TOL


def _packed_row(T, lengths):
    row = np.concatenate([[i + 1] * n for i, n in enumerate(lengths)])
    return np.pad(row, (0, T - len(row))).astype(np.int32)


def _dense_visible_blocks(qs, kvs, q_offset, bq, bk):
    B, T = qs.shape
    S = kvs.shape[1]
    mask = np.asarray(attn.attention_mask(jnp.asarray(qs), jnp.asarray(kvs), q_offset))
    return mask.reshape(B, T // bq, bq, S // bk, bk).any(axis=(2, 4))


def test_blockwise_visible_blocks():
    """The block table misses no visible pair; it is exact for packed rows (non-decreasing segment ids), also with
    padding and a cache offset, and may only over-approximate for arbitrary segment ids."""
    rng = np.random.default_rng(0)
    T, bq = 1024, 64
    rows = [_packed_row(T, [37, 150, 81, 200, 19, 64, 128, 90, 111, 55]), _packed_row(T, [1000]),
            np.concatenate([np.zeros(100, np.int32), _packed_row(T - 100, [13, 70, 8, 45, 77, 31, 60, 5, 29, 66, 41,
                                                                           12, 50, 38, 72, 20, 9, 55, 34, 48])])]
    qs = np.stack(rows)
    table = np.asarray(attn._visible_blocks(jnp.asarray(qs), jnp.asarray(qs), 0, bq, bq))
    np.testing.assert_array_equal(table, _dense_visible_blocks(qs, qs, 0, bq, bq))
    n = table.reshape(3, -1).sum(-1)
    print(f"visible {bq}x{bq} block pairs per row: {n.tolist()} of {(T // bq) ** 2} ({(T // bq) * (T // bq + 1) // 2} "
          "causal)")
    assert n[1] == 16 * 17 // 2 and n[0] < 50 and n[2] < 40  # one long sequence: the causal triangle
    # a cache: 32 queries at slot 300 of a 512-slot cache; non-monotone ids: a superset
    kvs = np.stack([_packed_row(512, [100, 250, 10]), rng.integers(0, 4, 512).astype(np.int32)])
    q_chunk = np.stack([np.full(32, 2, np.int32), kvs[1, 300:332]])
    table = np.asarray(attn._visible_blocks(jnp.asarray(q_chunk), jnp.asarray(kvs), 300, 8, 32))
    dense = _dense_visible_blocks(q_chunk, kvs, 300, 8, 32)
    np.testing.assert_array_equal(table[0], dense[0])
    assert (table | ~dense).all()


def test_blockwise_skips_hidden_blocks():
    """Many short sequences cost a fraction of one long sequence of the same total length (the loops run over the
    visible block pairs only): 2048 tokens in 256-slot blocks are 36 causal pairs as one sequence, 8 as 64-token
    sequences, 0 as padding."""
    B, T, H, Dh = 1, 2048, 8, 64
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((B, T, H, Dh)), jnp.float32) for _ in range(3))
    layouts = {"one": _packed_row(T, [T])[None], "short": _packed_row(T, [64] * 32)[None],
               "padding": np.zeros((1, T), np.int32)}
    counts = {name: int(attn._block_pairs(jnp.asarray(seg), jnp.asarray(seg), jnp.zeros(1, jnp.int32), 256, 256)[1])
              for name, seg in layouts.items()}
    assert counts == {"one": 36, "short": 8, "padding": 0}
    f = jax.jit(lambda q, k, v, seg: jax.grad(
        lambda q, k, v: jnp.sum(attn._blockwise(q, k, v, seg, seg, 0, block_q=256, block_k=256) ** 2),
        argnums=(0, 1, 2))(q, k, v))
    times = {}
    for name, seg in layouts.items():  # one compiled program: only the segment ids differ
        jax.block_until_ready(f(q, k, v, seg))
        best = np.inf
        for _ in range(3):
            t = time.perf_counter()
            jax.block_until_ready(f(q, k, v, seg))
            best = min(best, time.perf_counter() - t)
        times[name] = best
    print("blockwise fwd+bwd, 2048 tokens: " + ", ".join(f"{n} {t * 1e3:.1f} ms" for n, t in times.items()))
    assert times["short"] < times["one"] / 2 and times["padding"] < times["one"] / 4


def test_blockwise_memory_is_bounded():
    """Compiled temp memory of forward + backward: einsum's grows with T * S, blockwise's stays O(T * H * Dh)."""
    B, H, K, Dh = 1, 8, 2, 64
    temps = {}
    for T in (1024, 4096):
        q = jax.ShapeDtypeStruct((B, T, H, Dh), jnp.float32)
        kv = jax.ShapeDtypeStruct((B, T, K, Dh), jnp.float32)
        seg = jnp.ones((B, T), jnp.int32)
        for name in ("einsum", "blockwise"):
            fn = attn._BACKENDS[name]
            g = jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v, seg, seg, 0) ** 2), argnums=(0, 1, 2)))
            ma = g.lower(q, kv, kv).compile().memory_analysis()
            if ma is None:
                pytest.skip("no memory analysis on this backend")
            temps[name, T] = ma.temp_size_in_bytes
    print({f"{n} T={t}": f"{b / 2**20:.0f} MiB" for (n, t), b in temps.items()})
    scores = B * H * 4096 * 4096 * 4  # one fp32 score tensor at T = 4096
    assert temps["einsum", 4096] > scores
    assert temps["blockwise", 4096] < scores / 8
    assert temps["blockwise", 4096] < 6 * temps["blockwise", 1024]  # ~linear in T (einsum: 16x)


@pytest.mark.parametrize("preset", ["tiny-qwen2", "tiny-llama"])
def test_model_forward_blockwise_equals_einsum(monkeypatch, preset):
    monkeypatch.setattr(attn, "_BLOCK_CPU", 8)  # several blocks per row in the tiny batch (also off CPU: _BLOCK)
    monkeypatch.setattr(attn, "_BLOCK", 8)
    model = seal_jax.init_model(seal_jax.get_preset(preset))
    tokens, seg, pos = _packed_batch(model.config.vocab_size)
    ref = seal_jax.forward(seal_jax.Model(model.config.replace(attention="einsum"), model.params), tokens,
                           segment_ids=seg, positions=pos)
    got = seal_jax.forward(seal_jax.Model(model.config.replace(attention="blockwise"), model.params), tokens,
                           segment_ids=seg, positions=pos)
    err = float(jnp.max(jnp.abs(got - ref)))
    print(f"{preset} model forward blockwise vs einsum: max logit err {err:.2e}")
    assert err < 1e-4


@pytest.mark.parametrize("name", ["xla", "blockwise"])
def test_model_cached_decode_equals_einsum(name, monkeypatch):
    from seal_jax import generation
    from seal_jax.models.transformer import init_cache

    monkeypatch.setattr(attn, "_BLOCK_CPU", 4)  # blockwise: several blocks even at 16 cache slots
    monkeypatch.setattr(attn, "_BLOCK", 4)
    base = seal_jax.init_model(seal_jax.get_preset("tiny-qwen2"))
    seq = np.random.default_rng(1).integers(3, base.config.vocab_size, (2, 12)).astype(np.int32)
    outs = {}
    for impl in ("einsum", name):
        model = seal_jax.Model(base.config.replace(attention=impl), base.params)
        cache = init_cache(model.config, 2, 16)
        prompt_pos = np.tile(np.arange(8, dtype=np.int32), (2, 1))
        logits, cache = generation.decode_step(model, cache, seq[:, :8], prompt_pos, 0)
        steps = [logits]
        for t in range(8, 12):
            logits, cache = generation.decode_step(model, cache, seq[:, t:t + 1], np.full((2, 1), t, np.int32), t)
            steps.append(logits)
        outs[impl] = np.concatenate([np.asarray(s) for s in steps], axis=1)
    assert np.abs(outs[name] - outs["einsum"]).max() < 1e-4

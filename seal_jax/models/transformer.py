"""The decoder-only transformer shared by Qwen2 and Llama (Flax Linen; no I/O).

Shape letters used in every einsum below:
  B batch, T query length, S key length (T, or the KV-cache length), D hidden, F MLP hidden, V vocab,
  H query heads, K kv heads, G = H // K query heads per kv head, Dh head dim, L layers, r LoRA rank.

Parameters are a plain pytree (`{"params": ...}` of Linen) whose leaves, shapes and inits are the rows of the parameter
schema (`seal_jax.models.schema.PARAMS`); the model code below only reads them. The L decoder layers are stacked on a
leading axis and run with `nn.scan`, so compile time does not grow with depth. LoRA weights are a *separate* pytree
passed to `__call__` (stacked on L as well); the frozen base never changes shape whether or not adapters are used.

Attention masking is by index and segment: query t (cache slot `cache_index + t`) sees key s when s <= that slot, the
key's segment id equals the query's, and the key's segment id is non-zero (0 marks padding). Segment ids therefore give
padding masks (left or right) and sequence packing with one mechanism.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seal_jax.models import schema
from seal_jax.models.attention import attend
from seal_jax.models.config import ModelConfig
from seal_jax.models.grouped import grouped_lora
from seal_jax.models.rope import apply_rope, rope_tables

Array = jax.Array

def lora_delta(x: Array, lora: dict | None, name: str, backend: str = "auto") -> Array | None:
    """The LoRA update for one projection, or None when `name` has no adapter.

    x: [B, T, in]. lora[name] = {"a": A, "b": B, "scale": s} (this layer's slice) in one of three forms:
      shared  A [in, r],    B [r, out],    s []   one adapter for the whole batch;
      grouped A [G, in, r], B [G, r, out], s [G]  the B rows form G equal consecutive groups, group g uses adapter g
                                                  (G = B gives every row its own adapter; s = 0 switches one off);
      ragged  A [K, in, r], B [K, r, out], s [K], plus "group_ids" [G] and "group_sizes" [G]: the B*T tokens,
              flattened row-major, form consecutive groups of any sizes, group g using adapter group_ids[g]
              (`seal_jax.models.grouped`; `backend` = the model config's lora_backend).
    Optional "dropout": {"rate": [], "key": PRNG key} applies PEFT's lora_dropout to x before A (training only;
    shared and grouped forms).
    Returns [B, T, out] in x's dtype. The adapter math runs in the adapter's dtype (fp32 over a bf16 base).
    """
    if lora is None or name not in lora:
        return None
    m = lora[name]
    a, b, s = m["a"], m["b"], m["scale"]
    if "group_sizes" in m:
        Bn, T, d_in = x.shape
        y = grouped_lora(x.reshape(Bn * T, d_in), a, b, s, m["group_ids"], m["group_sizes"], backend)
        return y.reshape(Bn, T, -1).astype(x.dtype)
    xa = x.astype(a.dtype)
    if "dropout" in m:
        rate = m["dropout"]["rate"]
        keep = jax.random.bernoulli(m["dropout"]["key"], 1.0 - rate, xa.shape)
        xa = jnp.where(keep, xa / (1.0 - rate), 0.0).astype(xa.dtype)
    if a.ndim == 2:
        h = jnp.einsum("btd,dr->btr", xa, a)
        y = jnp.einsum("btr,ro->bto", h, b) * s
    else:
        G = a.shape[0]
        Bn, T, _ = x.shape
        xg = xa.reshape(G, Bn // G, T, -1)  # [G, B/G, T, in]
        h = jnp.einsum("gntd,gdr->gntr", xg, a)
        y = jnp.einsum("gntr,gro->gnto", h, b) * jnp.reshape(s, (G, 1, 1, 1))
        y = y.reshape(Bn, T, -1)
    return y.astype(x.dtype)


_INITS = {"normal": nn.initializers.normal(0.02), "ones": nn.initializers.ones, "zeros": nn.initializers.zeros}


def _group_params(module: nn.Module, cfg: ModelConfig, path: str, param_dtype) -> dict[str, Any]:
    """Create (init) or fetch (apply) the parameters under `path` of the params tree, as the schema lists them.

    Each sub-group is a child scope of the same name, so every leaf lands at its schema path (and draws the same
    random init it always has: Linen derives a leaf's key from its scope names and its order within the scope).
    """
    tree = schema.spec_tree(cfg)
    for k in filter(None, path.split("/")):
        tree = tree[k]
    out: dict[str, Any] = {}
    for name, node in tree.items():
        if path == "" and name == "layers":
            continue  # created by the layer scan, one slice per layer
        if isinstance(node, schema.ParamSpec):
            out[name] = module.param(name, _INITS[node.init], node.layer_shape(cfg), param_dtype)
        else:
            out[name] = _ParamGroup(cfg, f"{path}/{name}".lstrip("/"), param_dtype, name=name)()
    return out


class _ParamGroup(nn.Module):
    """One level of the params tree (a Linen scope) holding the schema's leaves under `group`."""

    cfg: ModelConfig
    group: str  # "/"-joined path of this level ("path" is a Linen Module property)
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self) -> dict[str, Any]:
        return _group_params(self, self.cfg, self.group, self.param_dtype)


def rms_norm(x: Array, scale: Array, eps: float) -> Array:  # x [..., D], scale [D] -> [..., D]
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return scale.astype(x.dtype) * xf.astype(x.dtype)  # as HF: weight * normed.to(input_dtype)


def linear(x: Array, p: dict[str, Array], equation: str) -> Array:
    """A projection written as one einsum (e.g. "btd,dnk->btnk"); the kernel keeps its head-split shape."""
    y = jnp.einsum(equation, x, p["kernel"].astype(x.dtype))
    if "bias" in p:
        y = y + p["bias"].astype(x.dtype)
    return y


def attention(p, x, cos, sin, segment_ids, kv_segment_ids, lora, layer_idx, cache, cache_index, cfg: ModelConfig):
    """x [B, T, D] -> ([B, T, D], cache); p = this layer's "attn" params (q, k, v, o)."""
    B, T, D = x.shape
    H, K, Dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

    def proj(name, n):
        y = linear(x, p[name], "btd,dnk->btnk")  # [B, T, n, Dh]
        d = lora_delta(x, lora, name, cfg.lora_backend)  # [B, T, n*Dh]
        return y if d is None else y + d.reshape(B, T, n, Dh)

    q = apply_rope(proj("q", H), cos, sin)  # [B, T, H, Dh]
    k = apply_rope(proj("k", K), cos, sin)  # [B, T, K, Dh]
    v = proj("v", K)  # [B, T, K, Dh]

    if cache is None:
        keys, values, kv_seg = k, v, kv_segment_ids  # [B, S=T, K, Dh], [B, S]
    else:
        # Write this chunk into the stacked cache in place (carried through the layer scan, donated by callers).
        k_all = jax.lax.dynamic_update_slice(cache["k"], k[None].astype(cache["k"].dtype),
                                             (layer_idx, 0, cache_index, 0, 0))  # [L, B, S, K, Dh]
        v_all = jax.lax.dynamic_update_slice(cache["v"], v[None].astype(cache["v"].dtype),
                                             (layer_idx, 0, cache_index, 0, 0))
        cache = {**cache, "k": k_all, "v": v_all}
        keys = jax.lax.dynamic_index_in_dim(k_all, layer_idx, 0, keepdims=False).astype(x.dtype)  # [B,S,K,Dh]
        values = jax.lax.dynamic_index_in_dim(v_all, layer_idx, 0, keepdims=False).astype(x.dtype)
        kv_seg = cache["seg"]  # [B, S]

    # query t sits at cache slot cache_index + t (slot t without a cache); see seal_jax/models/attention.py
    out = attend(q, keys, values, segment_ids, kv_seg, 0 if cache is None else cache_index,
                 cfg.attention)  # [B, T, H, Dh]

    y = linear(out, p["o"], "bthk,hkd->btd")  # [B, T, D]
    d = lora_delta(out.reshape(B, T, H * Dh), lora, "o", cfg.lora_backend)
    return (y if d is None else y + d), cache


def mlp(p, x, lora, cfg: ModelConfig) -> Array:
    """x [B, T, D] -> [B, T, D]; p = this layer's "mlp" params (gate, up, down)."""

    def proj(name, eq, inp):
        y = linear(inp, p[name], eq)
        d = lora_delta(inp, lora, name, cfg.lora_backend)
        return y if d is None else y + d

    gate = proj("gate", "btd,df->btf", x)  # [B, T, F]
    up = proj("up", "btd,df->btf", x)  # [B, T, F]
    return proj("down", "btf,fd->btd", jax.nn.silu(gate) * up)


def pin_activation(x: Array) -> Array:
    """x [B, T, D] at a layer boundary, constrained to the sharding rules' layout when a mesh is set
    (`seal_jax.sharding.mesh_context`); unchanged (no op in the program) otherwise."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    from seal_jax.sharding import activation_spec
    return jax.lax.with_sharding_constraint(x, activation_spec(x.shape, mesh))


class DecoderLayer(nn.Module):
    """One pre-norm block. Scanned: carry = (x, cache); per-layer inputs = (layer index, this layer's LoRA)."""

    cfg: ModelConfig
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, carry, per_layer, cos, sin, segment_ids, kv_segment_ids, cache_index):
        cfg = self.cfg
        x, cache = carry
        layer_idx, lora = per_layer
        p = _group_params(self, cfg, "layers", self.param_dtype)  # this layer's slice of params["layers"]
        x = pin_activation(x)  # [B, T, D]
        h, cache = attention(p["attn"], rms_norm(x, p["input_norm"]["scale"], cfg.rms_norm_eps), cos, sin,
                             segment_ids, kv_segment_ids, lora, layer_idx, cache, cache_index, cfg)
        x = x + h
        x = x + mlp(p["mlp"], rms_norm(x, p["post_attn_norm"]["scale"], cfg.rms_norm_eps), lora, cfg)
        return (pin_activation(x), cache), None


class Transformer(nn.Module):
    """tokens [B, T] -> (logits float32 [B, T, V], cache); output="last": logits of the last position [B, 1, V];
    output="hidden": the final-normed hidden states [B, T, D] (project with `head_matrix`).

    positions [B, T] int (rotary positions), segment_ids [B, T] int (0 = padding).
    kv_segment_ids [B, T] (no-cache mode only; default = segment_ids): the segment ids tokens carry *as keys*. The
    original SEAL trainer's unmasked padding needs pad tokens that are queries of segment 1 but invisible as keys.
    lora: None, or a per-layer dict stacked on L (see `lora_delta`); cache: None, or
    {"k": [L, B, S, K, Dh], "v": same, "seg": [B, S]} with `cache_index` the slot of tokens[:, 0].
    """

    cfg: ModelConfig
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens, positions, segment_ids, lora=None, cache=None, cache_index=None,
                 kv_segment_ids=None, output: str = "logits"):
        cfg = self.cfg
        p = _group_params(self, cfg, "", self.param_dtype)  # the top-level params (embedding, final_norm, lm_head)
        embedding = p["embedding"]  # [V, D]
        x = jnp.take(embedding, tokens, axis=0)  # [B, T, D]
        cos, sin = rope_tables(positions, cfg)  # [B, T, Dh] each
        segment_ids = segment_ids.astype(jnp.int32)
        kv_segment_ids = segment_ids if kv_segment_ids is None else kv_segment_ids.astype(jnp.int32)
        if cache is not None:
            cache_index = jnp.asarray(cache_index, jnp.int32)
            cache = {**cache, "seg": jax.lax.dynamic_update_slice(
                cache["seg"], segment_ids.astype(cache["seg"].dtype), (0, cache_index))}

        layer_cls = DecoderLayer
        if cfg.remat:
            layer_cls = nn.remat(DecoderLayer, prevent_cse=False)
        layers = nn.scan(layer_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                         in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                         length=cfg.num_layers)(cfg, self.param_dtype, name="layers")
        per_layer = (jnp.arange(cfg.num_layers, dtype=jnp.int32), lora)
        (x, cache), _ = layers((x, cache), per_layer, cos, sin, segment_ids, kv_segment_ids, cache_index)

        x = rms_norm(x, p["final_norm"]["scale"], cfg.rms_norm_eps)  # [B, T, D]
        head = head_matrix(p, cfg)  # [D, V]
        if output == "hidden":  # the caller projects (chunked cross-entropy: never all [B, T, V] logits at once)
            return x, cache
        if output == "last":  # only the position a sampler reads
            x = x[:, -1:]
        elif output != "logits":
            raise ValueError(f"unknown output {output!r} (logits, last or hidden)")
        logits = jnp.einsum("btd,dv->btv", x, head.astype(x.dtype), preferred_element_type=jnp.float32)
        return logits, cache


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=jnp.float32) -> dict[str, Array]:
    """An empty KV cache: k/v [L, B, S, K, Dh], seg [B, S] (0 = empty slot)."""
    shape = (cfg.num_layers, batch, length, cfg.num_kv_heads, cfg.head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype), "seg": jnp.zeros((batch, length), jnp.int32)}


def head_matrix(params, cfg: ModelConfig) -> Array:
    """The output projection [D, V]: lm_head, or the transposed embedding when tied."""
    return params["embedding"].T if cfg.tie_word_embeddings else params["lm_head"]

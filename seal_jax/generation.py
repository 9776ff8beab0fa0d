"""Batched generation: jit-compiled prefill + decode loop over a preallocated, donated KV cache.

Prompts of different lengths are left-padded to a common prompt bucket P (segment id 0 marks padding; each row's
rotary positions start at 0 at its first real token), so every row's next token lands in the same cache slot. The
batch, P and the new-token budget N are rounded up to buckets (`seal_jax.buckets`), and everything that varies per
call — temperatures, top-p, seeds, stop ids, per-row budgets — is a traced array, so calls inside one bucket reuse
one compiled program.

Work is sized to the request: prefill projects only the last position onto the vocabulary ([B, V] logits, not
[B, P, V]); decoding runs in windows: the cache starts at P + 64 slots (or P + N when N is smaller) and is grown by
doubling only while some row is still generating, so attention reads, and the cache holds, only what has been
generated so far (a `lax.while_loop` per window that stops once every row is done; one program per window size).

Several adapters in one call: each row names its adapter (`adapter_ids`); rows are sorted by adapter and the LoRA
terms applied to contiguous runs of rows (the ragged form of `seal_jax.models.grouped`), so no adapter is copied per
row; outputs come back in the caller's order.
"""

from __future__ import annotations

import collections
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from seal_jax.buckets import batch_bucket, bucket
from seal_jax.distributed import gather, put
from seal_jax.models.model import Model
from seal_jax.models.transformer import init_cache

MAX_STOP_IDS = 8  # stop ids are padded to this many (with -1), so their number never changes the compiled shape
FIRST_WINDOW = 64  # new tokens the cache holds before its first growth

# How many times each jitted function has been traced (i.e. compiled) in this process; tests read it.
TRACE_COUNTS: collections.Counter = collections.Counter()


def _as_lora_tree(lora, groups=None):
    """The model hook's form of `lora` inside jit: None; a single adapter (shared by every row); or a batch of
    adapters over row groups `groups` = (group_ids [G], group_sizes [G] in tokens of the flat [B * T] stream)."""
    if lora is None or not hasattr(lora, "layer_tree"):
        return lora
    if groups is not None:
        return lora.ragged_tree(*groups)
    return lora.layer_tree()


@functools.partial(jax.jit, donate_argnames=("cache",))
def _prefill(model: Model, lora, groups, tokens, positions, segment_ids, cache):
    """tokens [B, P] (left-padded) -> (last-position logits float32 [B, V], cache)."""
    TRACE_COUNTS["prefill"] += 1
    P = tokens.shape[1]
    groups = None if groups is None else (groups[0], groups[1] * P)  # rows -> tokens of the flat [B * P] stream
    logits, cache = model.apply(tokens, positions, segment_ids, lora=_as_lora_tree(lora, groups), cache=cache,
                                cache_index=0, output="last")
    return logits[:, 0], cache


@functools.partial(jax.jit, donate_argnames=("cache",))
def decode_step(model: Model, cache, tokens, positions, cache_index, lora=None):
    """One cached step: tokens [B, T] written at `cache_index` -> (logits float32 [B, T, V], cache)."""
    TRACE_COUNTS["decode_step"] += 1
    seg = jnp.ones(tokens.shape, jnp.int32)
    return model.apply(tokens, positions, seg, lora=_as_lora_tree(lora), cache=cache, cache_index=cache_index)


def sample_tokens(logits, keys, temperature, top_p):
    """logits float32 [B, V], keys [B, 2], temperature [B] (0 = greedy), top_p [B] -> tokens int32 [B]."""
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def nucleus(scaled):
        probs = jax.nn.softmax(scaled, axis=-1)  # [B, V]
        sorted_p = -jnp.sort(-probs, axis=-1)  # descending
        keep = (jnp.cumsum(sorted_p, axis=-1) - sorted_p) < top_p[:, None]  # always keeps the top token
        threshold = jnp.min(jnp.where(keep, sorted_p, jnp.inf), axis=-1, keepdims=True)  # [B, 1]
        return jnp.where(probs >= threshold, scaled, -jnp.inf)

    def sample(_):
        scaled = logits / jnp.maximum(temperature, 1e-6)[:, None]
        scaled = jax.lax.cond(jnp.all(top_p >= 1.0), lambda s: s, nucleus, scaled)
        sampled = jax.vmap(jax.random.categorical)(keys, scaled).astype(jnp.int32)
        return jnp.where(temperature > 0, sampled, greedy)

    # an all-greedy batch (answering questions) draws no [B, V] noise
    return jax.lax.cond(jnp.any(temperature > 0), sample, lambda _: greedy, None)


@functools.partial(jax.jit, donate_argnames=("cache",))
def _decode(model: Model, lora, groups, cache, state, lengths, start, temperature, top_p, max_new, stop_ids):
    """Decode until every row is done, the budget N = out.shape[1] is spent, or the cache is full.

    state = (t, logits [B, V], out [B, N], done [B], n_generated [B], keys [B, 2]): t new tokens are already in
    `out`, the cache holds the prompt (P = `start` slots) and the first t - 1 of them. lengths [B] prompt lengths,
    temperature/top_p [B], max_new [B] per-row budgets (0 for padding rows), stop_ids [MAX_STOP_IDS] (-1 = unused).
    Returns (state, cache); the stop token itself is not counted in n_generated.
    """
    TRACE_COUNTS["decode"] += 1
    B, N = state[2].shape
    S = cache["seg"].shape[1]
    ones = jnp.ones((B, 1), jnp.int32)
    tree = _as_lora_tree(lora, groups)  # decode: one token per row, so rows are tokens

    def cond(carry):
        t, _, _, done, _, _ = carry[0]
        return (t < N) & (start + t < S) & ~jnp.all(done)

    def body(carry):
        (t, logits, out, done, n_gen, keys), cache = carry
        split = jax.vmap(jax.random.split)(keys)  # [B, 2, 2]
        keys, sub = split[:, 0], split[:, 1]
        tok = sample_tokens(logits, sub, temperature, top_p)  # [B]
        is_stop = jnp.any(tok[:, None] == stop_ids[None, :], axis=-1)
        active = ~done
        out = jax.lax.dynamic_update_slice(out, jnp.where(active, tok, 0)[:, None], (0, t))
        n_gen = n_gen + (active & ~is_stop).astype(jnp.int32)
        done = done | is_stop | (t + 1 >= max_new)
        step_logits, cache = model.apply(tok[:, None], (lengths + t)[:, None], ones, lora=tree, cache=cache,
                                         cache_index=start + t)
        return (t + 1, step_logits[:, 0], out, done, n_gen, keys), cache

    return jax.lax.while_loop(cond, body, (state, cache))


@functools.partial(jax.jit, donate_argnames=("cache",), static_argnames=("size",))
def _grow(cache, size: int):
    """The cache padded with empty slots to `size` slots (its contents kept)."""
    TRACE_COUNTS["grow"] += 1
    extra = size - cache["seg"].shape[1]
    return {"k": jnp.pad(cache["k"], ((0, 0), (0, 0), (0, extra), (0, 0), (0, 0))),
            "v": jnp.pad(cache["v"], ((0, 0), (0, 0), (0, extra), (0, 0), (0, 0))),
            "seg": jnp.pad(cache["seg"], ((0, 0), (0, extra)))}


def _per_row(value, n: int, name: str, dtype) -> np.ndarray:
    if np.ndim(value) == 0:
        return np.full((n,), value, dtype)
    arr = np.asarray(value, dtype)
    if arr.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have one value per prompt ({n}), got shape {arr.shape}")
    return arr


def _validate(prompts, vocab_size: int) -> list[list[int]]:
    prompts = [list(map(int, p)) for p in prompts]
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i} is empty")
        if min(p) < 0 or max(p) >= vocab_size:
            raise ValueError(f"prompt {i} has token ids outside [0, {vocab_size})")
    return prompts


def _place_rows(mesh, cfg, B: int, S: int, dtype, row_arrays: dict):
    """Rows spread over the mesh's "adapter" axis (when it divides B); the cache born sharded the same way."""
    from seal_jax.sharding import logical_to_spec
    rows = {k: put(np.asarray(v), NamedSharding(mesh, logical_to_spec(("batch",) + ("_",) * (np.ndim(v) - 1),
                                                                     np.shape(v), mesh)))
            for k, v in row_arrays.items()}
    kv_shape = (cfg.num_layers, B, S, cfg.num_kv_heads, cfg.head_dim)
    kv = NamedSharding(mesh, logical_to_spec(("layers", "batch", "length", "kv_heads", "head_dim"), kv_shape, mesh))
    seg = NamedSharding(mesh, logical_to_spec(("batch", "length"), (B, S), mesh))
    cache = jax.jit(lambda: init_cache(cfg, B, S, dtype), out_shardings={"k": kv, "v": kv, "seg": seg})()
    return rows, cache


def _row_groups(row_adapters: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows sorted by adapter (stable) -> (order [B], group_ids [G], group_rows [G]) with G a power of two (padding
    groups: id -1, 0 rows), so the number of distinct adapters in a call only changes the program at a bucket."""
    order = np.argsort(row_adapters, kind="stable")
    ids, counts = np.unique(row_adapters[order], return_counts=True)
    G = batch_bucket(len(ids))
    gid = np.full(G, -1, np.int32)
    gsz = np.zeros(G, np.int32)
    gid[:len(ids)], gsz[:len(ids)] = ids, counts
    return order, gid, gsz


def _run(model: Model, lora, row_adapters: np.ndarray | None, prompts: list[list[int] | None], budgets: np.ndarray,
         temps: np.ndarray, tops: np.ndarray, keys, stop_token_ids, prompt_buckets, mesh=None) -> list[list[int]]:
    """Generate for exactly len(prompts) rows (None = a padding row with no budget); B is already bucketed.
    row_adapters [B]: each row's adapter in the batch `lora` (-1: none), or None (no adapter or a single one)."""
    cfg = model.config
    B = len(prompts)
    stop = list(stop_token_ids or [])
    if len(stop) > MAX_STOP_IDS:
        raise ValueError(f"at most {MAX_STOP_IDS} stop token ids are supported, got {len(stop)}")
    P = bucket(max(len(p) for p in prompts if p is not None), prompt_buckets)
    N = bucket(int(budgets.max()), minimum=1)
    if P + N > cfg.max_position_embeddings:
        raise ValueError(f"prompt bucket {P} + new-token bucket {N} exceeds max_position_embeddings "
                         f"{cfg.max_position_embeddings}")
    groups = None
    order = np.arange(B)
    if row_adapters is not None:
        order, gid, gsz = _row_groups(np.asarray(row_adapters, np.int32))
        groups = (jnp.asarray(gid), jnp.asarray(gsz))
        prompts = [prompts[i] for i in order]
        budgets, temps, tops, keys = budgets[order], temps[order], tops[order], jnp.asarray(keys)[order]
    tokens = np.zeros((B, P), np.int32)
    seg = np.zeros((B, P), np.int32)
    pos = np.zeros((B, P), np.int32)
    lengths = np.ones((B,), np.int32)
    for i, p in enumerate(prompts):
        if p is None:  # padding row: one dummy token, zero budget
            seg[i, -1] = 1
            continue
        L = len(p)
        tokens[i, P - L:] = p
        seg[i, P - L:] = 1
        pos[i, P - L:] = np.arange(L)
        lengths[i] = L
    stop_ids = np.full((MAX_STOP_IDS,), -1, np.int32)
    stop_ids[:len(stop)] = stop

    S = first_window(P, N)
    rows = dict(tokens=tokens, pos=pos, seg=seg, lengths=lengths, keys=np.asarray(keys), temps=temps, tops=tops,
                budgets=budgets, out=np.zeros((B, N), np.int32))
    if mesh is None:
        rows = {k: jnp.asarray(v) for k, v in rows.items()}
        cache = init_cache(cfg, B, S, model.dtype)
    else:
        rows, cache = _place_rows(mesh, cfg, B, S, model.dtype, rows)
    from seal_jax.sharding import mesh_context
    with mesh_context(mesh):  # the model pins its layer-boundary activations on the mesh
        logits, cache = _prefill(model, lora, groups, rows["tokens"], rows["pos"], rows["seg"], cache)
        out, n_gen = decode_windows(model, lora, groups, cache, logits, rows["lengths"], rows["keys"], rows["temps"],
                                    rows["tops"], rows["budgets"], jnp.asarray(stop_ids), rows["out"])
    out, n_gen = gather((out, n_gen))
    result: list[list[int]] = [[] for _ in range(B)]
    for i, row in enumerate(order):
        result[row] = out[i, :n_gen[i]].tolist()
    return result


def decode_windows(model: Model, lora, groups, cache, logits, lengths, keys, temperature, top_p, max_new, stop_ids,
                   out):
    """Decode after a prefill of P = cache slots - the first window: up to N = out.shape[1] new tokens per row, the
    cache doubled (`_grow`) each time it fills while some row is still generating. Returns (out [B, N], n_generated
    [B]) as device arrays."""
    B, N = out.shape
    S = cache["seg"].shape[1]
    P = S - min(N, FIRST_WINDOW)
    state = (jnp.int32(0), logits, out, max_new <= 0, jnp.zeros((B,), jnp.int32), keys)
    while True:
        state, cache = _decode(model, lora, groups, cache, state, lengths, jnp.int32(P), temperature, top_p, max_new,
                               stop_ids)
        t, done = gather((state[0], state[3]))  # host values, from a global array in a multi-host run too
        if int(t) >= N or bool(np.all(done)):
            return state[2], state[4]
        S = P + min(N, 2 * (S - P))  # some row is still generating: double the window
        cache = _grow(cache, S)


def first_window(prompt_bucket: int, new_bucket: int) -> int:
    """Cache slots of the first decode window: the prompt bucket plus up to FIRST_WINDOW new tokens."""
    return prompt_bucket + min(new_bucket, FIRST_WINDOW)


def _row_keys(seed, row_seeds: np.ndarray | None, B: int):
    if row_seeds is None:
        base = jax.random.PRNGKey(int(seed))
        return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(B))
    return jax.vmap(jax.random.PRNGKey)(jnp.asarray(row_seeds, jnp.uint32))


def generate(model: Model, prompts: Sequence[Sequence[int]], max_new_tokens: int | Sequence[int] = 32,
             temperature: float | Sequence[float] = 0.0, top_p: float | Sequence[float] = 1.0,
             seed: int | Sequence[int] = 0, stop_token_ids: Sequence[int] | None = None, lora=None,
             adapter_ids: Sequence[int] | None = None,
             prompt_buckets: Sequence[int] | None = None, mesh=None) -> list[list[int]]:
    """prompts: list of token-id lists -> list of new-token lists (stop token excluded).

    temperature 0 is greedy. `seed` is one int (row i uses fold_in(seed, i)) or one seed per row, so a row's sample
    does not depend on which other rows share its batch.
    lora: None, a single adapter (every row uses it), or a batch of K adapters with `adapter_ids` (one per row,
    -1 = the base model) so that each row uses its own adapter in this one call.
    mesh: spread the rows over the mesh's "adapter" axis (the model as placed by `distributed.shard_model`).
    """
    cfg = model.config
    n = len(prompts)
    if n == 0:
        return []
    prompts = _validate(prompts, cfg.vocab_size)
    budgets = _per_row(max_new_tokens, n, "max_new_tokens", np.int32)
    if budgets.min() < 0:
        raise ValueError("max_new_tokens must be >= 0")
    B = batch_bucket(n)
    pad = B - n
    row_budgets = np.concatenate([budgets, np.zeros(pad, np.int32)])
    temps = np.concatenate([_per_row(temperature, n, "temperature", np.float32), np.zeros(pad, np.float32)])
    tops = np.concatenate([_per_row(top_p, n, "top_p", np.float32), np.ones(pad, np.float32)])
    row_seeds = None if np.ndim(seed) == 0 else np.concatenate(
        [_per_row(seed, n, "seed", np.int64), np.zeros(pad, np.int64)])
    row_adapters = None
    if adapter_ids is not None:
        if lora is None or getattr(lora, "num_adapters", None) is None:
            raise ValueError("adapter_ids needs `lora` to be a batch of adapters")
        ids = _per_row(adapter_ids, n, "adapter_ids", np.int32)
        if ids.size and (ids.max() >= lora.num_adapters or ids.min() < -1):
            raise ValueError(f"adapter ids must lie in [-1, {lora.num_adapters}), got {ids.min()}..{ids.max()}")
        row_adapters = np.concatenate([ids, np.full(pad, -1, np.int32)])
    elif lora is not None and getattr(lora, "num_adapters", None) is not None:
        raise ValueError("a batch of adapters needs adapter_ids (one per prompt), or use generate_grouped")
    return _run(model, lora, row_adapters, prompts + [None] * pad, row_budgets, temps, tops,
                _row_keys(seed, row_seeds, B), stop_token_ids, prompt_buckets, mesh)[:n]


def generate_grouped(model: Model, lora, prompt_groups: Sequence[Sequence[Sequence[int]]],
                     max_new_tokens: int = 32, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                     stop_token_ids: Sequence[int] | None = None,
                     prompt_buckets: Sequence[int] | None = None, mesh=None) -> list[list[list[int]]]:
    """Answer K prompt sets with K adapters in one call: group k's prompts use adapter k of `lora` (a batch of K).
    `lora=None` answers every group with the base model. Returns, per group, the new-token lists of its prompts.

    Rows are the groups' prompts back to back (padded to a power of two), each tagged with its adapter, so a group
    costs only its own prompts; row i's sampling key is fold_in(seed, i) over that order."""
    K = len(prompt_groups)
    if lora is not None and lora.num_adapters != K:
        raise ValueError(f"{K} prompt groups for a batch of {lora.num_adapters} adapters")
    if K == 0 or all(len(g) == 0 for g in prompt_groups):
        return [[] for _ in range(K)]
    flat, owner = [], []
    for k, g in enumerate(prompt_groups):
        flat += list(g)
        owner += [k] * len(g)
    out = generate(model, flat, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                   stop_token_ids=stop_token_ids, lora=lora, adapter_ids=None if lora is None else owner,
                   prompt_buckets=prompt_buckets, mesh=mesh)
    result: list[list[list[int]]] = [[] for _ in range(K)]
    for k, o in zip(owner, out):
        result[k].append(o)
    return result

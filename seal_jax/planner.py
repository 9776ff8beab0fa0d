"""Memory planner: estimated bytes per device for a batched inner-loop (training) step and for generation.

    plan = plan_training(get_preset("qwen2.5-7b"), LoraConfig(32, 64), num_adapters=16, seq_len=2048,
                         mesh=(4, 2), dtype="bfloat16")
    print(plan.table());  check_fits(plan, device_memory("v5e"))   # raises MemoryPlanError with what to change

Per device, with mesh (A adapter shards, M model shards):
  weights      every base leaf, divided by M along the dims the sharding rules split (exactly as seal_jax.sharding)
  adapters     K/A adapters x LoRA params x 4 B (fp32);  optimizer: AdamW moments, 2x that;  gradients: 1x that
  data         the plan's [K/A, N, T] token/weight/segment/position arrays
  activations  K/A x batch x an empirical formula in T, V, L, D, F, H (per model shard) for one training step:
               bytes = 4 (c_v T V + c_d T L D + c_f T L F + c_h T^2 L H)   (layer terms use one layer under remat)
               whose coefficients were fitted to XLA's `compiled.memory_analysis()` (CPU backend) over 9 shapes,
               within 4% without remat and 16% with; see tests/test_planner.py, which re-checks a tiny preset
  kv_cache     2 L B S Kkv Dh x itemsize / shards   (generation only)
Estimates carry the fused-kernel behaviour of the backend they were fitted on; keep a margin (default 10%).
"""

from __future__ import annotations

import dataclasses
import math
import types

import numpy as np

from seal_jax.lora import LoraConfig, num_lora_params
from seal_jax.models.config import ModelConfig
from seal_jax.models.grouped import resolve_backend, tile_size
from seal_jax.models.schema import lora_shapes, param_axes
from seal_jax.sharding import logical_to_spec

GiB = 1024 ** 3
# Device memory (bytes) per chip by name.
DEVICE_MEMORY = {"v5e": 16 * GiB, "v4": 32 * GiB, "v5p": 95 * GiB, "v6e": 32 * GiB, "H100": 80 * 10 ** 9,
                 "H200": 141 * 10 ** 9, "A100-80": 80 * 10 ** 9, "A100-40": 40 * 10 ** 9}
# Empirical activation coefficients (c_v, c_d, c_f, c_h), fitted on XLA's CPU memory_analysis (see module docstring).
_ACT = {False: (2.77, 0.521, 6.275, 3.298), True: (2.184, 1.098, 3.529, 3.038)}
_ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}


class MemoryPlanError(ValueError):
    """A run that would not fit (one line: the estimate, the budget and what to change)."""


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    what: str
    mesh: tuple[int, int]
    weights: int
    adapters: int = 0
    optimizer: int = 0
    gradients: int = 0
    data: int = 0
    activations: int = 0
    kv_cache: int = 0

    @property
    def total(self) -> int:
        return (self.weights + self.adapters + self.optimizer + self.gradients + self.data + self.activations
                + self.kv_cache)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["total"] = self.total
        return d

    def table(self) -> str:
        rows = [(k, getattr(self, k)) for k in ("weights", "adapters", "optimizer", "gradients", "data",
                                                  "activations", "kv_cache") if getattr(self, k)]
        rows.append(("total", self.total))
        return "\n".join(f"  {k:<12s} {v / GiB:10.3f} GiB" for k, v in rows)


def device_memory(name: str) -> int:
    """Bytes of memory of one chip, by name ("v5e", "v4", "H100", ...), case-insensitive prefix match."""
    for key, value in DEVICE_MEMORY.items():
        if name.lower().startswith(key.lower()):
            return value
    raise ValueError(f"unknown device {name!r} (known: {', '.join(DEVICE_MEMORY)})")


def _mesh(shape: tuple[int, int]):
    return types.SimpleNamespace(shape={"adapter": shape[0], "model": shape[1]})


def weight_bytes(cfg: ModelConfig, mesh: tuple[int, int], dtype: str) -> int:
    """Per-device bytes of the base weights under the sharding rules."""
    from seal_jax.models.model import abstract_params
    import jax
    item = _ITEMSIZE[dtype]
    fake = _mesh(mesh)
    total = 0
    axes = param_axes()
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params(cfg))[0]:
        key = "/".join(str(getattr(k, "key", k)) for k in path)
        spec = logical_to_spec(axes[key], leaf.shape, fake, log=False)  # a what-if mesh: nothing to warn about
        shards = math.prod(fake.shape[a] for a in spec if a is not None)
        total += int(np.prod(leaf.shape)) * item // shards
    return total


def _split(n: int, m: int) -> float:
    return n / m if n % m == 0 else n


def activation_bytes(cfg: ModelConfig, seq_len: int, rows: int, model_shards: int, remat: bool,
                     dtype: str) -> int:
    """One training step's temporaries for `rows` sequences of `seq_len` tokens (per device)."""
    cv, cd, cf, ch = _ACT[remat]
    T, L = seq_len, cfg.num_layers
    V = _split(cfg.vocab_size, model_shards)
    F = _split(cfg.intermediate_size, model_shards)
    H = _split(cfg.num_heads, model_shards) if cfg.num_kv_heads % model_shards == 0 else cfg.num_heads
    act_scale = _ITEMSIZE[dtype] / 4  # hidden activations follow the compute dtype; logits/scores stay fp32
    layers = 1 if remat else L
    per_row = 4 * (cv * T * V + act_scale * (cd * T * L * cfg.hidden_size + cf * T * layers * F) + ch * T * T * layers * H)
    return int(rows * per_row)


def plan_training(cfg: ModelConfig, lora: LoraConfig, num_adapters: int, seq_len: int, batch_size: int = 1,
                  examples_per_adapter: int = 8, mesh: tuple[int, int] = (1, 1), dtype: str = "bfloat16",
                  remat: bool | None = None) -> MemoryPlan:
    """Per-device estimate for one compiled inner-loop step over `num_adapters` adapters."""
    a, m = mesh
    k_local = math.ceil(num_adapters / a)
    remat = cfg.remat if remat is None else remat
    lora_bytes = num_lora_params(cfg, lora) * 4 * k_local
    n_rows = 1 << max(0, math.ceil(math.log2(max(examples_per_adapter, 1))))
    data = k_local * n_rows * seq_len * 5 * 4
    return MemoryPlan(
        what=f"train {num_adapters} adapters x batch {batch_size} x {seq_len} tokens", mesh=mesh,
        weights=weight_bytes(cfg, mesh, dtype), adapters=lora_bytes, optimizer=2 * lora_bytes, gradients=lora_bytes,
        data=data, activations=activation_bytes(cfg, seq_len, k_local * batch_size, m, remat, dtype))


# The ragged engine's call (seal_jax.engine), rematerialised layers. Temporaries, fitted (least worst relative
# error, benchmarks/fit_engine_memory.py --real) to XLA's memory_analysis() of the real call lowered from abstract
# arrays (fp32, CPU backend) on 10 small-preset shapes and the two real ones (qwen2.5-7b, 64 slots, 8 x 512;
# llama-3.2-1b, 16 r128 slots, 4 x 8192; their errors count double): all within 12%, the real ones +3.6% and -5.9%
# (-7.9% for the ARC call at batch 2).
# (The attention-score and tile terms fit to zero at these shapes: XLA reuses those buffers.)
#   temp = s * slot_state + c * N (D + (H + 2 Kv) Dh + F) * 4 + v * chunk * V * 4 + g * LoRA tile gathers
#          + L * N * D (saved layer inputs) + a * R * H * T^2 * 4 (one layer's fp32 scores, einsum / xla only)
_ENGINE = {"state": 2.956, "layer": 6.326, "logits": 1.694, "tiles": 0.0, "scores": 0.0}


def plan_engine(cfg: ModelConfig, lora: LoraConfig, slots: int, rows: int, row_length: int,
                steps_per_call: int = 8, dtype: str = "bfloat16", max_batch: int = 1,
                attention: str | None = None, platform: str | None = None,
                mesh: tuple[int, int] = (1, 1)) -> MemoryPlan:
    """Per-device estimate for one call of the ragged engine (`seal_jax.engine`) with rematerialised layers (the
    engine's policy for models that need it; see `engine_remat`): K = `slots` resident adapters per adapter shard
    (fp32 weights and AdamW moments; their gradients), the shard's packed data ([steps, rows, row_length]), the frozen
    weights, and one global step's temporaries over N = rows x row_length tokens. On a mesh (A, M) every device of an
    adapter shard holds that shard's slots and data; the weights, and the heads / MLP / vocabulary parts of the
    temporaries, are split over M as the sharding rules split them (a size that does not divide stays whole).
    `attention` (default: the config's) and `platform` ("cpu" | "gpu" | "tpu"; default: this process's) decide the
    attention backend the call gets (`attention.select_implementation`): einsum and xla hold fp32 scores
    [rows, H, T, T] of one layer; blockwise, cudnn and splash do not."""
    t = engine_terms(cfg, lora, slots, rows, row_length, dtype, max_batch, attention, platform, mesh[1])
    temps = t["saved"] + sum(_ENGINE[k] * t[k] for k in _ENGINE)
    state = t["state"]
    data = steps_per_call * (rows * row_length * 6 * 4 + 2 * t["groups"] * 4 + slots)
    return MemoryPlan(what=f"engine call: {slots} adapter slots, {rows} x {row_length}-token streams per adapter "
                           f"shard", mesh=tuple(mesh), weights=weight_bytes(cfg, tuple(mesh), dtype), adapters=state,
                      optimizer=2 * state, data=data, activations=int(temps))


def engine_fits(cfg: ModelConfig, lora: LoraConfig, budget_bytes: int, slots: int, rows: int, row_length: int,
                mesh: tuple[int, int] = (1, 1), margin: float = 0.10, **kw) -> dict:
    """What fits one device of `budget_bytes` (less `margin`) on `mesh`, the others held as given: the most slots
    per adapter shard at rows x row_length, the most rows of row_length at `slots` (0: none), whether the call fits,
    and whether the engine rematerialises its layers there (`engine_remat`; the estimate assumes it does)."""
    usable = budget_bytes * (1 - margin)
    total = lambda k, r, c=cfg: plan_engine(c, lora, k, r, row_length, mesh=mesh, **kw).total  # noqa: E731

    def most(f, hi=1 << 20) -> int:
        if f(1) > usable:
            return 0
        lo = 1
        while lo < hi and f(min(2 * lo, hi)) <= usable:
            lo = min(2 * lo, hi)
        top = min(2 * lo, hi)
        while top - lo > 1:
            mid = (lo + top) // 2
            lo, top = (mid, top) if f(mid) <= usable else (lo, mid)
        return lo

    return {"max_slots": most(lambda k: total(k, rows)), "max_rows": most(lambda r: total(slots, r)),
            "fits": total(slots, rows) <= usable,
            "remat": engine_remat(cfg, rows * row_length, kw.get("dtype", "bfloat16"), budget_bytes)}


def engine_terms(cfg: ModelConfig, lora: LoraConfig, slots: int, rows: int, row_length: int,
                 dtype: str = "bfloat16", max_batch: int = 1, attention: str | None = None,
                 platform: str | None = None, model_shards: int = 1) -> dict[str, int]:
    """The raw byte counts `plan_engine` weighs by `_ENGINE` (and `saved`, counted once; `groups`: the call's
    ragged group count), per device of a `model_shards`-way "model" axis. `benchmarks/fit_engine_memory.py` refits
    the weights against XLA from these."""
    from seal_jax.engine import group_bound
    from seal_jax.losses import chunk_size
    K, R, T, N = slots, rows, row_length, rows * row_length
    item = _ITEMSIZE[dtype]
    M = model_shards
    D, Dh = cfg.hidden_size, cfg.head_dim
    H, Kv = _split(cfg.num_heads, M), _split(cfg.num_kv_heads, M)
    F, V = _split(cfg.intermediate_size, M), _split(cfg.vocab_size, M)
    Gm = group_bound(K, max_batch, R, T)
    # the tiled LoRA backend gathers each tile's adapter weights (fp32), and their gradients, for one layer
    tiles = 0
    if resolve_backend(cfg.lora_backend) == "tiled":
        shapes = lora_shapes(cfg)
        P = N // tile_size(N, Gm) + Gm + 1
        tiles = 2 * P * sum(lora.rank * (shapes[t][0] + shapes[t][1]) for t in lora.targets) * 4
    return {"state": num_lora_params(cfg, lora) * 4 * K,  # fp32 adapters
            "layer": int(N * (D + (H + 2 * Kv) * Dh + F) * item),
            "scores": int(R * H * T * T * 4) if _backend(cfg, attention, R, T, dtype, platform) in ("einsum", "xla")
            else 0,
            "logits": int(chunk_size(N, cfg.vocab_size) * V * 4),  # one chunk's logits, the vocabulary split
            "tiles": tiles,
            "saved": cfg.num_layers * N * D * item,  # each layer's input, kept for the backward pass
            "groups": Gm}


def _backend(cfg: ModelConfig, attention, R: int, T: int, dtype: str, platform) -> str:
    import jax
    import jax.numpy as jnp
    from seal_jax.models.attention import select_implementation
    dt = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    q = jax.ShapeDtypeStruct((R, T, cfg.num_heads, cfg.head_dim), dt)
    k = jax.ShapeDtypeStruct((R, T, cfg.num_kv_heads, cfg.head_dim), dt)
    return select_implementation(attention or cfg.attention, q, k, 0, platform)


def device_platform(name: str) -> str:
    """"gpu" for the NVIDIA names of DEVICE_MEMORY, "tpu" for the others."""
    return "gpu" if name.upper().startswith(("H1", "H2", "A1")) else "tpu"


def engine_remat(cfg: ModelConfig, tokens: int, dtype: str = "bfloat16", budget_bytes: int | None = None) -> bool:
    """Whether the engine should rematerialise layers: when keeping every layer's activations for the backward pass
    (about 4 tensors of (D + (H + 2 Kv) Dh + F) per token and layer, a rough upper count) would take more than a
    quarter of the device's memory (default: the first local device's, or 16 GiB when it does not say)."""
    if budget_bytes is None:
        budget_bytes = _local_device_bytes() or 16 * GiB
    per_token = 4 * cfg.num_layers * (cfg.hidden_size + (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
                                      + cfg.intermediate_size) * _ITEMSIZE[dtype]
    return tokens * per_token > budget_bytes / 4


def _local_device_bytes() -> int | None:
    try:
        import jax
        stats = jax.local_devices()[0].memory_stats() or {}
        return int(stats.get("bytes_limit", 0)) or None
    except Exception:
        return None


def plan_generation(cfg: ModelConfig, batch: int, prompt_len: int, new_tokens: int, mesh: tuple[int, int] = (1, 1),
                    dtype: str = "bfloat16", lora: LoraConfig | None = None, num_adapters: int = 0) -> MemoryPlan:
    """Per-device estimate for batched generation (KV cache of prompt + new tokens, prefill temporaries)."""
    a, m = mesh
    b_local = math.ceil(batch / a)
    S = prompt_len + new_tokens
    kv_split = m if cfg.num_kv_heads % m == 0 else 1
    kv = 2 * cfg.num_layers * b_local * S * cfg.num_kv_heads * cfg.head_dim * _ITEMSIZE[dtype] // kv_split
    H = _split(cfg.num_heads, m) if cfg.num_kv_heads % m == 0 else cfg.num_heads
    prefill = b_local * prompt_len * (4 * 3 * H * S + 4 * _split(cfg.vocab_size, m)
                                      + _ITEMSIZE[dtype] * 4 * _split(cfg.intermediate_size, m))
    adapters = num_lora_params(cfg, lora) * 4 * max(1, math.ceil(num_adapters / a)) if lora else 0
    return MemoryPlan(what=f"generate {batch} rows x ({prompt_len} + {new_tokens}) tokens", mesh=mesh,
                      weights=weight_bytes(cfg, mesh, dtype), adapters=adapters, activations=int(prefill),
                      kv_cache=int(kv))


def check_fits(plan: MemoryPlan, budget_bytes: int, margin: float = 0.10) -> None:
    """Raise MemoryPlanError (before anything is compiled) when the plan exceeds (1 - margin) of the budget."""
    usable = budget_bytes * (1 - margin)
    if plan.total <= usable:
        return
    a, m = plan.mesh
    biggest = max(("weights", "activations", "kv_cache", "optimizer"), key=lambda k: getattr(plan, k))
    advice = {
        "weights": f"split the base over more devices (--mesh {a},{m * 2}) or use bfloat16 weights",
        "activations": "train fewer adapters per device (more adapter shards or fewer adapters), a shorter "
                       "--seq-len, or turn on rematerialisation",
        "kv_cache": "generate with fewer rows per call, fewer new tokens, or more devices",
        "optimizer": "fewer adapters per device or a smaller LoRA rank",
    }[biggest]
    raise MemoryPlanError(f"{plan.what} needs ~{plan.total / GiB:.1f} GiB per device on mesh ({a},{m}) but only "
                          f"{usable / GiB:.1f} GiB is usable ({budget_bytes / GiB:.1f} GiB less {margin:.0%}); "
                          f"largest part: {biggest} ({getattr(plan, biggest) / GiB:.1f} GiB): {advice}")

"""Accelerator readiness without an accelerator: the programs that run on a GPU or TPU are exported here for them
(`jax.export`, platforms ["tpu"] and ["cuda"]), so a lowering error or a Pallas/Mosaic block-shape error shows in CI
before any device is lent.

Exported, for both model families' tiny configs (tiny-qwen2: qkv bias, untied head; tiny-llama: llama3 RoPE, tied
head; both grouped-query attention): the engine's training call (`engine._run_call`) with every attention backend
that lowers for the platform (TPU: splash, blockwise, xla; CUDA: blockwise, xla) and every LoRA backend (tiled,
ragged_dot, dense); the SFT step (`sft._step`); prefill and the decode loop (`generation._prefill`, `generation._decode`)
with a multi-adapter bank. Attention is chosen as it would be on the device (`attention._platform` answers the target
platform while tracing), and the test checks the backend asked for is the one traced.

cuDNN flash attention cannot be traced here: JAX's cuDNN path reads the GPU's compute capability and cuDNN version at
trace time, and there is no GPU; `test_cudnn_needs_a_gpu_at_trace_time` pins the reason the selection gives. Its
lowering is covered on a device by `benchmarks/gpu_suite.sh`.
"""

import jax
import jax.numpy as jnp
import pytest

import seal_jax
from seal_jax import engine as eng
from seal_jax import generation, sft
from seal_jax.lora import LoraConfig
from seal_jax.models import attention as att
from seal_jax.models.model import Model, abstract_params

pytestmark = pytest.mark.slow(minutes=1.5)  # its time in a parallel run: runs first, longest first (tests/conftest.py)

sds = jax.ShapeDtypeStruct
I32, F32 = jnp.int32, jnp.float32
LORA = LoraConfig(rank=4, alpha=8.0, targets=("q", "v", "down"))
PLATFORMS = {"tpu": "tpu", "cuda": "gpu"}  # jax.export's name -> the name attention selection uses
ATTENTION = {"tpu": ("splash", "blockwise", "xla"), "cuda": ("blockwise", "xla")}
R, T, K = 2, 256, 4  # engine call: 2 rows of 256 tokens (T >= 128: splash's lane multiple), 4 slots


@pytest.fixture
def on_platform(monkeypatch):
    def use(platform: str):
        monkeypatch.setattr(att, "_platform", lambda: PLATFORMS[platform])
    return use


def _model(preset: str, attention: str, lora_backend: str) -> Model:
    cfg = seal_jax.get_preset(preset).replace(attention=attention, lora_backend=lora_backend)
    return Model(cfg, abstract_params(cfg, "bfloat16"))


def _export(fn, platform: str, *args, **kwargs) -> str:
    exported = jax.export.export(fn, platforms=[platform])(*args, **kwargs)
    assert exported.platforms == (platform,)
    return exported.mlir_module()


def _selected(model: Model, platform: str) -> str:
    q = sds((R, T, model.config.num_heads, model.config.head_dim), jnp.bfloat16)
    k = sds((R, T, model.config.num_kv_heads, model.config.head_dim), jnp.bfloat16)
    return att.select_implementation(model.config.attention, q, k, 0, PLATFORMS[platform])


CASES = [(p, preset, a, lb) for p in PLATFORMS for preset in ("tiny-qwen2", "tiny-llama") for a in ATTENTION[p]
         for lb in ("tiled", "ragged_dot", "dense")]


@pytest.mark.parametrize("platform,preset,attention,lora_backend", CASES)
def test_engine_call_exports(on_platform, platform, preset, attention, lora_backend):
    on_platform(platform)
    model = _model(preset, attention, lora_backend)
    assert _selected(model, platform) == attention
    cfg = eng.EngineConfig(slots=K, max_tokens_per_step=R * T, remat=False)
    e = eng.Engine(model, LORA, cfg)
    G, Gm = cfg.steps_per_call, eng.group_bound(K, 1, R, T)
    data = {"tokens": sds((1, G, R, T), I32), "positions": sds((1, G, R, T), I32),
            "segment_ids": sds((1, G, R, T), I32), "kv_segment_ids": sds((1, G, R, T), I32),
            "weights": sds((1, G, R, T), F32), "token_slot": sds((1, G, R * T), I32),
            "group_ids": sds((1, G, Gm), I32), "group_sizes": sds((1, G, Gm), I32),
            "stepping": sds((1, G, K), jnp.bool_), "targets": sds((1, G), I32),
            "target_index": sds((1, G, 64), I32)}  # the completion-only loss path (ARC)
    hp = {n: sds((K,), F32 if n in ("learning_rate", "max_grad_norm", "weight_decay") else I32)
          for n in eng._Scheduler.HP}
    state = jax.eval_shape(lambda: e._init_state(K))
    text = _export(eng._run_call, platform, e.model, state, data, hp, sds((K,), jnp.bool_), sds((K,), I32),
                   sds((), I32))
    if attention == "splash":
        assert "tpu_custom_call" in text  # the Mosaic kernel itself was lowered, forward and backward
    if lora_backend == "ragged_dot":
        assert "ragged_dot" in text or "ragged" in text


@pytest.mark.parametrize("platform", list(PLATFORMS))
@pytest.mark.parametrize("preset", ["tiny-qwen2", "tiny-llama"])
def test_sft_prefill_and_decode_export(on_platform, platform, preset):
    on_platform(platform)
    attention = "splash" if platform == "tpu" else "blockwise"
    model = _model(preset, attention, "ragged_dot" if platform == "tpu" else "tiled")
    cfg = model.config
    lora = jax.eval_shape(lambda: seal_jax.lora.init_lora(cfg, LORA, jax.random.PRNGKey(0)))
    # SFT: one step over a batch of 2 rows of 256 tokens
    batch = {"tokens": sds((2, T), I32), "weights": sds((2, T), F32), "segment_ids": sds((2, T), I32),
             "kv_segment_ids": sds((2, T), I32), "positions": sds((2, T), I32)}
    hp = {"total_steps": sds((), I32), "learning_rate": sds((), F32), "schedule": sds((), I32),
          "warmup_steps": sds((), I32), "max_grad_norm": sds((), F32), "weight_decay": sds((), F32),
          "seeds": sds((), I32)}
    opt = jax.eval_shape(lambda w: seal_jax.optim.init_state(w), lora.weights)
    text = _export(sft._step, platform, model, LORA, lora.weights, opt, sds((), I32), batch, hp)
    if platform == "tpu":
        assert "tpu_custom_call" in text
    # generation with a bank of 4 adapters over row groups: prefill (8 rows x 128-token prompts) and the decode loop
    B, P, S = 8, 128, 192
    bank = jax.eval_shape(lambda: seal_jax.lora.init_lora(cfg, LORA, jax.random.PRNGKey(0), num_adapters=4))
    groups = (sds((4,), I32), sds((4,), I32))
    cache = jax.eval_shape(lambda: seal_jax.models.transformer.init_cache(cfg, B, S, jnp.bfloat16))
    _export(generation._prefill, platform, model, bank, groups, sds((B, P), I32), sds((B, P), I32),
            sds((B, P), I32), cache)
    state = (sds((), I32), sds((B, cfg.vocab_size), F32), sds((B, 64), I32), sds((B,), jnp.bool_),
             sds((B,), I32), sds((B, 2), jnp.uint32))
    _export(generation._decode, platform, model, bank, groups, cache, state, sds((B,), I32), sds((), I32),
            sds((B,), F32), sds((B,), F32), sds((B,), I32), sds((generation.MAX_STOP_IDS,), I32))


def test_cudnn_needs_a_gpu_at_trace_time():
    q = sds((R, T, 4, 16), jnp.bfloat16)
    k = sds((R, T, 2, 16), jnp.bfloat16)
    name, why = att._select("cudnn", q, k, 0, "gpu")
    assert name != "cudnn" and "compute capability" in why

"""Shared fixtures: tiny random transformers models built in-process (no downloads), saved in HF layout."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest


def _xla_cache_dir() -> str:
    """The run's on-disk XLA compilation cache: the user's JAX_COMPILATION_CACHE_DIR if set, else a fresh temporary
    folder removed at exit. Many modules compile the same programs (the tiny models, the demo model, the engine's
    buckets), and `_release_compiled_programs` below drops the in-memory copies after each module, so without this
    every module and every subprocess a test starts (they inherit the environment) compiles them again. `make test`'s
    pytest-xdist workers inherit the folder from the main process, which imports this file first, so they share it.
    A cached program is the same executable (the key covers the program, the compile options, the XLA flags and the
    jax version), so no test sees a difference; the compile-count tests count traces, which still happen."""
    path = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if not path:
        path = tempfile.mkdtemp(prefix="seal-jax-tests-xla-cache-")
        atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


os.environ["JAX_COMPILATION_CACHE_DIR"] = _xla_cache_dir()
# Only programs that take 0.1 s or more to compile are written: the training, generation and engine programs (0.2-10
# s each), not the hundreds of tiny eager ops (20-90 ms; reading one back costs about as much). With the size limit
# below, jax scans the whole folder (a stat and a read per entry) on every write, so each entry makes every later
# write slower: with every compile cached (min 0), one tests/models/test_grouped.py case took 7.6 s beside an empty
# cache and 85 s beside 4,000 entries (benchmarks/RESULTS.md "Test suite time").
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# A size limit turns on jax's file lock around cache reads and writes: the subprocesses tests start (two at once in
# tests/test_multihost.py) write the same entries at the same time, and without the lock one could read another's
# half-written file. The limit itself is never reached (the suite's cache stays far below it).
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(64 << 30))
# Most of the suite's time is XLA compiling tiny programs (tests/test_engine.py: 262 s with a cold cache, 65 s with a
# warm one). jax's flag compiles them with LLVM at -O0; the HLO passes (fusion, buffer assignment) still run, and the
# planner's checks against memory_analysis still pass (tests/test_planner.py). Measured back to back on a 2-core VM,
# times as pytest prints them: tests/arc + tests/knowledge + tests/models (519 tests) 762 s -> 613 s,
# tests/test_engine.py 262 s -> 169 s; the demo test, which runs more than it compiles, 110 s both ways
# (benchmarks/RESULTS.md "Test suite time"). Slower programs, same semantics: the tests check values and behaviour,
# not speed. JAX_DISABLE_MOST_OPTIMIZATIONS=0 runs the suite on fully optimised programs.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# XLA's CPU backend turns fusions into kernels with its MLIR "fusion emitters" by default; most of a tiny program's
# compile time goes there. The legacy elemental emitter compiles the same optimised HLO into kernels in a third of the
# time (the engine's training program: 3.34 s -> 0.99 s; tests/test_engine.py with a cold cache 209 s -> 142 s,
# benchmarks/RESULTS.md "Test suite time"). Same HLO, same numerics checks: the tests compare values, not speed.
# Subprocesses inherit it (cpu_devices_env keeps it); XLA_FLAGS naming xla_cpu_use_fusion_emitters overrides it.
FAST_COMPILE_FLAG = "--xla_cpu_use_fusion_emitters=false"
if "xla_cpu_use_fusion_emitters" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_FLAG}".strip()


def cpu_devices_env(devices: int) -> dict[str, str]:
    """The environment for a subprocess on `devices` simulated CPU devices, the suite's XLA flags kept."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags)


SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")
DEMO_MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "seal_jax", "assets",
                          "demo_model")


def shared_path(*parts: str) -> str:
    """A path under ../shared; skips the test cleanly when the shared folder (or the file) is absent."""
    p = os.path.join(SHARED, *parts)
    if not os.path.exists(p):
        pytest.skip(f"shared data not available: {p}")
    return p


def tiny_hf_config(family: str, **overrides):
    """Tiny configs that exercise each family's special parts: qwen2 = qkv bias + untied head;
    llama = llama3 rope scaling with a small original_max_position_embeddings (so scaling changes the frequencies)
    + tied embeddings."""
    from transformers import LlamaConfig, Qwen2Config

    common = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                  initializer_range=0.05, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if family == "qwen2":
        kw = dict(common, rope_theta=10000.0, tie_word_embeddings=False, rms_norm_eps=1e-6)
        kw.update(overrides)
        return Qwen2Config(**kw)
    kw = dict(common, head_dim=16, rope_theta=500000.0, tie_word_embeddings=True, rms_norm_eps=1e-5,
              rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                            "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    kw.update(overrides)
    return LlamaConfig(**kw)


def build_hf_model(family: str, path: str, seed: int = 0, **overrides):
    """A random-initialised transformers model in fp32, saved to `path`. Returns the torch model (eval mode)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_hf_config(family, **overrides), dtype=torch.float32)
    model.eval()
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="session", params=["qwen2", "llama"])
def hf_tiny(request, tmp_path_factory):
    """(family, torch model, checkpoint dir) for each family."""
    path = str(tmp_path_factory.mktemp(f"hf_{request.param}"))
    return request.param, build_hf_model(request.param, path), path


def scaled_model(cfg, seed: int = 0, scale: float = 10.0):
    """`seal_jax.init_model(cfg, seed)` with every weight except the norm scales multiplied by `scale`.

    init_model draws normal(0.02) weights; on the tied tiny-llama such a model only repeats the last prompt token
    under greedy decoding (the token's own embedding dominates the final hidden state), so greedy tests on it could
    hardly fail. normal(0.2) (scale 10, like initializer_range=0.2 for transformers) gives outputs that vary from
    token to token and from row to row.
    """
    import jax

    import seal_jax

    model = seal_jax.init_model(cfg, seed=seed)
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x if "norm" in jax.tree_util.keystr(path) else x * scale, model.params)
    return seal_jax.Model(model.config, params)


def assert_varied(rows, min_distinct: int = 3):
    """Greedy rows that could reveal a bug: each row has >= min_distinct distinct tokens and no two rows agree."""
    rows = [list(r) for r in rows]
    distinct = [len(set(r)) for r in rows]
    assert min(distinct) >= min_distinct, f"degenerate greedy rows (distinct tokens per row: {distinct})"
    assert len({tuple(r) for r in rows}) == len(rows), f"identical greedy rows: {rows}"


@pytest.fixture(scope="module")
def demo_policy():
    """(model, tokenizer, two passages): the shipped demo model and two of its world's ReST-EM training passages,
    for tests that run the SEAL loop on a model that can learn."""
    import seal_jax
    from seal_jax.demo_world import build_world, to_passages
    from seal_jax.tokenizer import Tokenizer
    world = build_world(0)
    return (seal_jax.load_pretrained(DEMO_MODEL, dtype="float32"), Tokenizer.from_dir(DEMO_MODEL),
            to_passages(world.new_train[:2], 0, "new_train"))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Tests of modules marked `slow` go first, the longest first (the mark's `minutes`: the module's time in a
    parallel run, rounded), then the rest in collected order. `make test` runs whole modules on parallel workers
    (pytest-xdist, --dist loadscope --no-loadscope-reorder: xdist's own reorder sorts modules by their number of
    tests, which put the longest, with few tests, last) and hands them out in this order, so the long modules start
    first and the short ones fill in behind them."""
    def minutes(item) -> float:
        mark = item.get_closest_marker("slow")
        return -mark.kwargs.get("minutes", 1.0) if mark is not None else 0.0
    items.sort(key=minutes)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop every compiled program after each test module. A whole-suite process otherwise keeps hundreds of XLA:CPU
    executables (each with its own memory mappings) and, past ~870 tests, an XLA compile in tests/test_engine.py
    segfaulted (three full runs; the same modules pass in smaller groups). Within a module programs are still shared,
    so the compile-count tests see what they did."""
    yield
    import jax
    jax.clear_caches()

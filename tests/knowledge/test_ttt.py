"""Knowledge TTT on the ragged engine: a whole evaluation stage compiles each program once per shape bucket (no
recompiles per batch of finished adapters or per answering call), and its records equal the padded layout's."""

import collections

import jax
import numpy as np
import pytest

import seal_jax
from seal_jax import engine as eng
from seal_jax import generation
from seal_jax.knowledge.data import Passage, Question
from seal_jax.knowledge.ttt import Job, TTTConfig, evaluate_jobs, evaluate_stream
from seal_jax.lora import LoraConfig

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from seal_jax.tokenizer import Tokenizer, train_bpe_tokenizer_dir
    rng = np.random.default_rng(0)

    def sentence(n):
        return " ".join(rng.choice(WORDS, n))

    passages = [Passage(f"Title {i}", ". ".join(sentence(8) for _ in range(3 + i % 3)),
                        tuple(Question(sentence(5) + "?", sentence(2)) for _ in range(2 + i % 2)),
                        completions=("\n".join(sentence(6) for _ in range(2 + i % 3)),))
                for i in range(6)]
    texts = [p.context for p in passages] + [q.question for p in passages for q in p.questions]
    tok = Tokenizer.from_dir(train_bpe_tokenizer_dir(texts, str(tmp_path_factory.mktemp("tok")), vocab_size=300))
    model = seal_jax.init_model(seal_jax.get_preset("tiny-qwen2"), seed=0)
    jobs = [Job(i, 0, r, p.completions[0]) for i, p in enumerate(passages) for r in range(2)]
    return model, tok, passages, jobs


CFG = TTTConfig(lora=LoraConfig(rank=4, alpha=8.0, targets=("q", "v")), epochs=2, loss_mode="all",
                answer_max_tokens=6, slots=3, tokens_per_step=128, answer_rows=8)


def _grade(questions, golds, answers):
    return [a == g for a, g in zip(answers, golds)]


def _signature(args, kwargs):
    leaves = jax.tree.leaves((args, kwargs))
    return tuple((getattr(x, "shape", None), str(getattr(x, "dtype", type(x).__name__))) for x in leaves)


def test_stage_compiles_once_per_shape(world, monkeypatch):
    model, tok, passages, jobs = world
    seen = collections.defaultdict(set)
    calls = collections.Counter()

    def spy(module, name, counter_key):
        fn = getattr(module, name)

        def wrapper(*args, **kwargs):
            seen[counter_key].add(_signature(args, kwargs))
            calls[counter_key] += 1
            return fn(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    spy(eng, "_run_call", "run_call")
    for name in ("_prefill", "_decode", "_grow"):
        spy(generation, name, name.strip("_"))
    traces_before = {**eng.TRACE_COUNTS, **generation.TRACE_COUNTS}
    stats = {}
    records = [r for part in evaluate_stream(model, tok, passages, jobs, CFG, _grade, seed=0, stats=stats)
               for r in part]
    assert sorted(r["key"] for r in records) == sorted(j.key for j in jobs)
    traced = {k: {**eng.TRACE_COUNTS, **generation.TRACE_COUNTS}.get(k, 0) - traces_before.get(k, 0)
              for k in ("run_call", "prefill", "decode", "grow")}
    for key in ("run_call", "prefill", "decode"):
        assert calls[key] > len(seen[key]) >= 1, key  # several calls, fewer shapes: programs are reused
        assert traced[key] <= len(seen[key]), (key, traced[key], len(seen[key]))  # at most one compile per shape
    assert stats["calls"] >= 3 and stats["real_tokens"] > 0

    # a second stage of the same buckets (other passages' jobs) compiles nothing new
    again = {**eng.TRACE_COUNTS, **generation.TRACE_COUNTS}
    list(evaluate_stream(model, tok, passages, [Job(j.passage_index, 0, 5, j.completion) for j in jobs], CFG,
                         _grade, seed=1))
    now = {**eng.TRACE_COUNTS, **generation.TRACE_COUNTS}
    assert {k: now.get(k, 0) - again.get(k, 0) for k in traced} == {k: 0 for k in traced}


def test_ragged_records_equal_padded(world):
    """The same jobs on the engine and on the padded layout: the same steps, losses and answers."""
    model, tok, passages, jobs = world
    ragged = evaluate_jobs(model, tok, passages, jobs[:6], CFG, _grade, seed=0)
    padded = evaluate_jobs(model, tok, passages, jobs[:6], TTTConfig(**{**CFG.__dict__, "engine": "padded",
                                                                         "adapters_per_batch": 4}), _grade, seed=0)
    for a, b in zip(ragged, padded):
        assert a["key"] == b["key"] and a["steps"] == b["steps"] and a["train_tokens"] == b["train_tokens"]
        np.testing.assert_allclose(a["first_loss"], b["first_loss"], rtol=1e-5)
        np.testing.assert_allclose(a["final_loss"], b["final_loss"], rtol=1e-4)
        assert a["answers"] == b["answers"]

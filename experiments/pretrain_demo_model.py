"""Pretrain the embedded demo model: a tiny Qwen2-architecture LM (and its BPE tokenizer) on the known part of the
synthetic world of `seal_jax.demo_world`, so that `make demo` can run the real SEAL loop on a CPU with no download.

    python -m experiments.pretrain_demo_model --seed 0 --out seal_jax/assets/demo_model

The corpus (a fresh draw of phrasings every epoch, from the world's seed and the epoch number):
  * passages about the known entities ("{title}\\n{passage}", the layout TTT trains on), several phrasings each;
  * one-fact statements ("{title}\\n{name} worked as a weaver."), mostly the fact's canonical statement;
  * QA in the exact answer-prompt format, answered with the canonical statement (for 75% of the known entities; the
    rest measure whether a question retrieves facts the model only read);
  * passage -> implications examples in the exact self-edit prompt format about fresh entities drawn anew every
    epoch (so the model learns to copy facts out of the passage, not to recall them), of mixed quality: 0-5 of the
    passage's facts, one per line, in the passage's own words with the full name; the other lines filler;
  * passage -> notes documents about other fresh entities (the same copying, every fact, without the prompt).
Documents end with eos and are packed (first fit, in shuffled order) into rows of --seq-len tokens; attention never
crosses documents. AdamW with warm-up and cosine decay, full parameters, float32.

Writes to --out: config.json + model.safetensors (HF layout, float32), the tokenizer files, training_curve.json
(per-step loss, per-epoch probes, timings) and training_curve.png. The run is deterministic: the same seed and flags
give the same tokenizer, data order and (up to floating-point reduction order) the same weights.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

import numpy as np
from seal_jax.runs import ArgumentParser

PROG = "experiments.pretrain_demo_model"
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "seal_jax", "assets",
                           "demo_model")


def parse_args(argv=None):
    ap = ArgumentParser(prog=f"python -m {PROG}", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0, help="world, tokenizer, init and data-order seed")
    ap.add_argument("--out", default=DEFAULT_OUT)
    g = ap.add_argument_group("model (Qwen2 architecture)")
    g.add_argument("--vocab-size", type=int, default=2048)
    g.add_argument("--hidden", type=int, default=128)
    g.add_argument("--intermediate", type=int, default=512)
    g.add_argument("--layers", type=int, default=4)
    g.add_argument("--heads", type=int, default=4)
    g.add_argument("--kv-heads", type=int, default=2)
    g.add_argument("--tie-embeddings", action=argparse.BooleanOptionalAction, default=True,
                   help="share the input embedding and the output head (copying a token is then the simplest circuit)")
    g = ap.add_argument_group("corpus (see seal_jax.demo_world.pretraining_documents)")
    g.add_argument("--passages-per-entity", type=float, default=1)
    g.add_argument("--statements-per-fact", type=float, default=1, help="canonical statements per fact per epoch")
    g.add_argument("--restatements-per-fact", type=float, default=0.5, help="other phrasings per fact per epoch")
    g.add_argument("--qa-per-fact", type=float, default=0.5)
    g.add_argument("--implications", type=int, default=600, help="passage -> implications examples per epoch")
    g.add_argument("--notes", type=int, default=300,
                   help="passage + every fact's note documents per epoch (copying practice without the prompt)")
    g.add_argument("--quality-weights", default="1,1,1,1,1,1",
                   help="weights of implications restating 0,1,...,5 of the passage's facts")
    g = ap.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=40)
    g.add_argument("--seq-len", type=int, default=256)
    g.add_argument("--batch-rows", type=int, default=4)
    g.add_argument("--lr", type=float, default=5e-3)
    g.add_argument("--warmup-steps", type=int, default=100)
    g.add_argument("--min-lr-ratio", type=float, default=0.1)
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--probe-every", type=int, default=5, help="epochs between QA / implications probes (0 = end)")
    g.add_argument("--probe-n", type=int, default=32, help="entities per probe set")
    ap.add_argument("--check-transformers", action=argparse.BooleanOptionalAction, default=True,
                    help="load the saved checkpoint with transformers and compare logits")
    return ap.parse_args(argv)


# ------------------------------------------------------------------------------------------------ data
def pack_documents(docs: list[list[int]], seq_len: int) -> dict[str, np.ndarray]:
    """First-fit packing of token lists (each already ending with eos) into rows of seq_len; segment ids restart
    positions and block attention between documents. Documents longer than a row are truncated."""
    rows: list[list[list[int]]] = []
    space: list[int] = []
    for d in docs:
        d = d[:seq_len]
        for i, free in enumerate(space):
            if free >= len(d):
                rows[i].append(d)
                space[i] -= len(d)
                break
        else:
            rows.append([d])
            space.append(seq_len - len(d))
    n = len(rows)
    out = {k: np.zeros((n, seq_len), np.int32) for k in ("tokens", "segment_ids", "positions")}
    for r, row in enumerate(rows):
        at = 0
        for s, d in enumerate(row, start=1):
            out["tokens"][r, at:at + len(d)] = d
            out["segment_ids"][r, at:at + len(d)] = s
            out["positions"][r, at:at + len(d)] = np.arange(len(d))
            at += len(d)
    return out


def epoch_rows(world, tok, args, epoch: int) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    from seal_jax import demo_world as dw
    qw = tuple(float(x) for x in args.quality_weights.split(","))
    docs = dw.pretraining_documents(world, passages_per_entity=args.passages_per_entity,
                                    statements_per_fact=args.statements_per_fact,
                                    restatements_per_fact=args.restatements_per_fact, qa_per_fact=args.qa_per_fact,
                                    n_implications=args.implications, n_notes=args.notes, quality_weights=qw,
                                    epoch=epoch)
    ids = tok.batch_encode([d["text"] for d in docs], add_bos=False)
    eos = tok.eos_token_id
    ids = [x + [eos] for x in ids]
    counts: dict[str, int] = {}
    for d, x in zip(docs, ids):
        counts[d["kind"]] = counts.get(d["kind"], 0) + len(x)
    rows = pack_documents(ids, args.seq_len)
    perm = np.random.default_rng([args.seed, epoch]).permutation(rows["tokens"].shape[0])
    return {k: v[perm] for k, v in rows.items()}, counts


# ------------------------------------------------------------------------------------------------ probes
def _norm(text: str) -> str:
    text = "".join(c for c in text.lower() if c.isalnum() or c.isspace())
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def matches(gold: str, prediction: str) -> bool:
    """The probes' own grader (SQuAD normalisation; the prediction is the gold answer or a sentence ending with it, as
    the canonical statements the model answers with do), so the curve does not depend on the offline grader."""
    g, p = _norm(gold), _norm(prediction)
    return bool(g) and (p == g or p.endswith(" " + g))


def probe(model, tok, world, args, rng_seed: int) -> dict:
    """Greedy QA accuracy (`matches`) on known entities with / without QA in the corpus and on NEW entities (no TTT:
    should be near chance), canonical-statement recall for known entities without QA, and the quality of sampled
    implications for NEW passages (facts restated on a line with the name; non-filler lines with no true value)."""
    from seal_jax import demo_world as dw, generation
    from seal_jax.knowledge.prompts import format_answer_prompt, format_self_edit_prompt
    n = args.probe_n
    qa_known = dw.qa_entities(world)
    no_qa = world.known[len(qa_known):]
    sets = {"qa_known": qa_known[:n], "noqa_known": no_qa[:n], "new_base": world.new_eval[:n]}
    out = {}
    rng = random.Random(rng_seed)
    for name, ents in sets.items():
        qs, golds, prompts = [], [], []
        for e in ents:
            for q, a in dw.qa_pairs(e, rng):
                qs.append(q)
                golds.append(a)
                prompts.append(tok.encode(format_answer_prompt(e.name, q), add_bos=False))
        outs = generation.generate(model, prompts, max_new_tokens=24, stop_token_ids=[tok.eos_token_id])
        preds = [tok.decode(o).strip() for o in outs]
        out[name] = float(np.mean([matches(g, p) for g, p in zip(golds, preds)]))
    # statement completion for known entities without QA: "{name}\n{name} loved the colour" -> value
    prompts, golds = [], []
    for e in no_qa[:n]:
        for attr, value in e.facts:
            prompts.append(tok.encode(f"{e.name}\n" + dw.statement_stem(e, attr), add_bos=False))
            golds.append(value)
    outs = generation.generate(model, prompts, max_new_tokens=8, stop_token_ids=[tok.eos_token_id])
    out["fact_recall_noqa"] = float(np.mean([matches(g, tok.decode(o).strip()) for g, o in zip(golds, outs)]))
    # sampled implications for NEW passages: the fraction of each passage's facts restated on a line with the name,
    # and the fraction of non-filler lines that state none of the entity's values (made-up or miscopied facts)
    passages = dw.to_passages(world.new_train[:n], world.seed, "probe")
    prompts = [tok.encode(format_self_edit_prompt(p), add_bos=False) for p in passages]
    outs = generation.generate(model, prompts, max_new_tokens=80, temperature=1.0, top_p=0.95, seed=rng_seed,
                               stop_token_ids=[tok.eos_token_id])
    cover, wrong = [], []
    for e, o in zip(world.new_train[:n], outs):
        lines = [l.strip() for l in tok.decode(o).splitlines() if l.strip() and not dw.is_filler(e, l)]
        stated = [l for l in lines if e.name in l]
        cover.append(np.mean([any(v in l for l in stated) for _, v in e.facts]))
        wrong.append(np.mean([not (e.name in l and any(v in l for _, v in e.facts)) for l in lines])
                     if lines else 0.0)
    out["implication_fact_coverage"] = float(np.mean(cover))
    out["implication_wrong_lines"] = float(np.mean(wrong))
    out["example_implications"] = tok.decode(outs[0])
    return out


# ------------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    args = parse_args(argv)
    import jax
    import jax.numpy as jnp
    import optax

    import seal_jax
    from seal_jax import demo_world as dw, inner_loop as il
    from seal_jax.models.config import ModelConfig
    from seal_jax.tokenizer import Tokenizer, train_bpe_tokenizer_dir

    t_start = time.time()
    os.makedirs(args.out, exist_ok=True)
    world = dw.build_world(args.seed)
    train_bpe_tokenizer_dir(dw.tokenizer_corpus(world), args.out, vocab_size=args.vocab_size)
    tok = Tokenizer.from_dir(args.out)
    eos = tok.eos_token_id
    cfg = ModelConfig(family="qwen2", vocab_size=tok.vocab_size, hidden_size=args.hidden,
                      intermediate_size=args.intermediate, num_layers=args.layers, num_heads=args.heads,
                      num_kv_heads=args.kv_heads, head_dim=args.hidden // args.heads, rope_theta=10000.0,
                      rms_norm_eps=1e-6, qkv_bias=True, tie_word_embeddings=args.tie_embeddings,
                      max_position_embeddings=1024, bos_token_id=None, eos_token_ids=(eos,), pad_token_id=eos)
    print(f"[pretrain] world seed {args.seed}: {len(world.known)} known, {args.implications + args.notes} fresh "
          f"entities per epoch, {len(world.new_train)} + {len(world.new_eval)} new entities; vocab {tok.vocab_size}; "
          f"model {cfg.num_params() / 1e6:.2f}M params", flush=True)

    model = seal_jax.init_model(cfg, seed=args.seed, dtype="float32")
    rows0, counts0 = epoch_rows(world, tok, args, 0)
    steps_per_epoch = -(-rows0["tokens"].shape[0] // args.batch_rows)
    total = steps_per_epoch * args.epochs  # rows per epoch vary slightly; the schedule uses the first epoch's count
    sched = optax.warmup_cosine_decay_schedule(0.0, args.lr, args.warmup_steps, max(total, args.warmup_steps + 1),
                                               args.lr * args.min_lr_ratio)
    opt = optax.chain(optax.clip_by_global_norm(1.0),
                      optax.adamw(sched, b1=0.9, b2=0.98, eps=1e-8, weight_decay=args.weight_decay))
    params = model.params
    opt_state = opt.init(params)
    B, T = args.batch_rows, args.seq_len

    @jax.jit
    def step(params, opt_state, batch):
        def loss_fn(p):
            seg = batch["segment_ids"]
            return il.token_loss(seal_jax.Model(cfg, p), None, batch["tokens"], (seg > 0).astype(jnp.float32), seg,
                                 seg, batch["positions"], batch["valid"])[0]
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    curve = {"args": vars(args), "command": " ".join([f"python -m {PROG}"] + (argv if argv is not None
                                                                               else sys.argv[1:])),
             "model": {"params": cfg.num_params(), **cfg.to_hf()}, "tokens_per_epoch": counts0,
             "steps_per_epoch": steps_per_epoch, "loss": [], "epochs": []}
    print(f"[pretrain] {sum(counts0.values())} tokens/epoch ({counts0}), {rows0['tokens'].shape[0]} rows of {T}, "
          f"{steps_per_epoch} steps/epoch x {args.epochs} epochs", flush=True)
    t_train = time.time()
    g = 0
    for ep in range(args.epochs):
        rows, _ = (rows0, counts0) if ep == 0 else epoch_rows(world, tok, args, ep)
        n = rows["tokens"].shape[0]
        ep_losses = []
        t_ep = time.time()
        for s in range(0, n, B):
            batch = {k: v[s:s + B] for k, v in rows.items()}
            valid = np.ones(B, np.float32)
            if batch["tokens"].shape[0] < B:
                pad = B - batch["tokens"].shape[0]
                valid[B - pad:] = 0
                batch = {k: np.concatenate([v, np.zeros((pad, T), v.dtype)]) for k, v in batch.items()}
            batch["valid"] = valid
            params, opt_state, loss = step(params, opt_state, {k: jnp.asarray(v) for k, v in batch.items()})
            loss = float(loss)
            ep_losses.append(loss)
            curve["loss"].append(loss)
            g += 1
        rec = {"epoch": ep + 1, "step": g, "mean_loss": float(np.mean(ep_losses)),
               "last_loss": float(np.mean(ep_losses[-10:])), "seconds": time.time() - t_ep,
               "elapsed": time.time() - t_start}
        last = ep + 1 == args.epochs
        if last or (args.probe_every and (ep + 1) % args.probe_every == 0):
            rec["probe"] = probe(seal_jax.Model(cfg, params), tok, world, args, rng_seed=ep)
        curve["epochs"].append(rec)
        print(f"[pretrain] epoch {ep + 1}/{args.epochs}: loss {rec['mean_loss']:.3f} (last 10 steps "
              f"{rec['last_loss']:.3f}), {rec['seconds']:.0f} s" +
              (f"; probe {json.dumps({k: v for k, v in rec['probe'].items() if k != 'example_implications'})}"
               if "probe" in rec else ""), flush=True)
    curve["train_seconds"] = time.time() - t_train
    model = seal_jax.Model(cfg, params)
    seal_jax.save_pretrained(model, args.out)
    curve["total_seconds"] = time.time() - t_start
    curve["example_implications"] = curve["epochs"][-1]["probe"]["example_implications"]
    with open(os.path.join(args.out, "training_curve.json"), "w") as f:
        json.dump(curve, f, indent=1)
    plot_curve(curve, os.path.join(args.out, "training_curve.png"))
    size = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(f"[pretrain] saved to {args.out} ({size / 1e6:.1f} MB) in {curve['total_seconds']:.0f} s", flush=True)
    if args.check_transformers:
        check_transformers(model, args.out)
    return 0


def plot_curve(curve: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    loss = np.asarray(curve["loss"])
    a.plot(loss, lw=0.5, alpha=0.4, label="step")
    k = max(1, curve["steps_per_epoch"] // 4)
    if len(loss) > k:
        a.plot(np.arange(k - 1, len(loss)), np.convolve(loss, np.ones(k) / k, "valid"), label=f"mean of {k}")
    a.set_xlabel("step")
    a.set_ylabel("token cross-entropy")
    a.set_yscale("log")
    a.legend()
    a.set_title("pretraining loss")
    probes = [(e["epoch"], e["probe"]) for e in curve["epochs"] if "probe" in e]
    for key, label in [("qa_known", "QA, known (QA in corpus)"), ("noqa_known", "QA, known (no QA in corpus)"),
                       ("new_base", "QA, NEW entities (no TTT)"), ("fact_recall_noqa", "statement recall (no QA)"),
                       ("implication_fact_coverage", "implications: facts restated"),
                       ("implication_wrong_lines", "implications: wrong lines")]:
        b.plot([p[0] for p in probes], [p[1][key] for p in probes], marker="o", label=label)
    b.set_xlabel("epoch")
    b.set_ylim(0, 1)
    b.legend(fontsize=8)
    b.set_title("probes")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def check_transformers(model, path: str) -> None:
    """transformers' Qwen2ForCausalLM loads the checkpoint and gives the same logits."""
    import seal_jax
    import torch
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids = np.arange(1, 41, dtype=np.int64)[None] % model.config.vocab_size
    with torch.no_grad():
        ref = hf(torch.from_numpy(ids)).logits.numpy()
    ours = np.asarray(seal_jax.forward(model, ids.astype(np.int32)))
    err = float(np.max(np.abs(ref - ours)))
    print(f"[pretrain] transformers {type(hf).__name__} loads it; max |logit difference| {err:.2e}", flush=True)
    if err > 1e-3:
        raise SystemExit(f"error: transformers logits differ by {err}")


if __name__ == "__main__":
    sys.exit(main())

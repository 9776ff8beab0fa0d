"""Supervised LoRA fine-tuning of the policy (ReST-EM's M-step, ARC behaviour cloning): grain data + orbax state.

Rows are (prompt, completion) token lists; the loss is on the completion (with eos appended, as TRL does) unless
`completion_only=False`. The data pipeline is a grain `MapDataset` (shuffled from a seed, reshuffled every epoch,
batched), whose iterator state is checkpointed beside the adapter and optimiser state, so a killed SFT resumes
mid-epoch and ends exactly where an uninterrupted one would. Every batch is padded to one bucketed length, so the
whole run is one compiled step; the step itself is the inner loop's (`inner_loop._adapter_step`) for one adapter.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Sequence

import grain
import jax
import jax.numpy as jnp
import numpy as np

from seal_jax import inner_loop as il
from seal_jax import optim
from seal_jax.buckets import bucket
from seal_jax.checkpoints.state import StateCheckpointer
from seal_jax.lora import ALL_TARGETS, Lora, LoraConfig, init_lora, merge
from seal_jax.models.model import Model


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """Defaults: the original ReST-EM M-step (LoRA r64 a128 on all linear layers, lr 3e-4, 2 epochs, batch 10)."""

    lora: LoraConfig = LoraConfig(rank=64, alpha=128.0, targets=ALL_TARGETS)
    learning_rate: float = 3e-4
    epochs: int = 2
    batch_size: int = 10
    schedule: str = "linear"
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    seed: int = 0
    max_length: int = 2048
    completion_only: bool = True
    # The original ARC behaviour cloning (padding="longest", pad = eos): every row right-padded with eos to the
    # set's longest, the pads in the loss but not attention keys.
    pad_to_longest: bool = False
    checkpoint_every: int = 0  # steps between checkpoints when a directory is given (0 = only at the end)


def _rows(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], eos_id: int | None,
          cfg: SFTConfig, length: int) -> dict[str, np.ndarray]:
    n = len(prompts)
    out = {k: np.zeros((n, length), np.int32) for k in ("tokens", "segment_ids", "positions")}
    out["weights"] = np.zeros((n, length), np.float32)
    longest = max(min(len(p) + len(c) + (eos_id is not None), cfg.max_length) for p, c in zip(prompts, completions))
    out["kv_segment_ids"] = np.zeros((n, length), np.int32)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        c = tuple(c) + ((eos_id,) if eos_id is not None else ())
        n_own = min(len(p) + len(c), cfg.max_length)
        # eos pads up to the set's longest row (pad_to_longest): trained on, not attended to (il.Example.pads)
        ex = il.Example(tuple(p) + c, (0 if cfg.completion_only else 1,) * len(p) + (1,) * len(c),
                        pads=longest - n_own if cfg.pad_to_longest else 0)
        toks, w, keys = ex.laid_out("completion", eos_id if eos_id is not None else 0, cfg.max_length)
        L = len(toks)
        out["tokens"][i, :L] = toks
        out["weights"][i, :L] = w
        out["segment_ids"][i, :L] = 1
        out["kv_segment_ids"][i, :keys] = 1
        out["positions"][i, :L] = np.arange(L)
    return out


def sft_dataset(rows: dict[str, np.ndarray], cfg: SFTConfig) -> grain.MapDataset:
    """Shuffled (reshuffled per epoch), repeated for cfg.epochs, batched dicts of [batch, T] arrays."""
    n = rows["tokens"].shape[0]
    return (grain.MapDataset.range(n).shuffle(seed=cfg.seed).repeat(cfg.epochs)
            .map(lambda i: {k: v[i] for k, v in rows.items()})
            .batch(cfg.batch_size, drop_remainder=False))


@functools.partial(jax.jit, static_argnames=("lora_cfg",), donate_argnames=("weights", "opt_state"))
def _step(model: Model, lora_cfg: LoraConfig, weights, opt_state, step, batch, hp):
    bm = batch["tokens"].shape[0]
    data = dict(batch, batch_index=jnp.arange(bm, dtype=jnp.int32)[None])
    w, o, new_step, failed, loss, gnorm = il._adapter_step(model, lora_cfg, weights, opt_state, step,
                                                           jnp.bool_(False), data, hp)
    return w, o, new_step, failed, loss, gnorm


def train_sft(model: Model, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
              eos_id: int | None, cfg: SFTConfig = SFTConfig(), checkpoint_dir: str | None = None,
              stop_after: int | None = None, log=None) -> tuple[Lora, list[float]]:
    """LoRA SFT of `model` on (prompt, completion) token rows. Returns (adapter, per-step losses).

    checkpoint_dir: orbax checkpoints (adapter, AdamW state, step) plus the grain iterator state; re-running resumes.
    stop_after: stop after this many steps of this call (simulates a kill; the checkpoint is written first).
    """
    if len(prompts) != len(completions) or not prompts:
        raise ValueError(f"SFT needs as many prompts as completions and at least one row, got "
                         f"{len(prompts)} and {len(completions)}")
    if cfg.pad_to_longest and eos_id is None:
        raise ValueError("SFTConfig.pad_to_longest pads with eos: give eos_id")
    longest = max(min(len(p) + len(c) + 1, cfg.max_length) for p, c in zip(prompts, completions))
    rows = _rows(prompts, completions, eos_id, cfg, bucket(longest))
    n, bs = len(prompts), cfg.batch_size
    total = -(-(n * cfg.epochs) // bs)  # grain batches the repeated stream, so a batch may span two epochs
    hp = {"total_steps": jnp.int32(total), "learning_rate": jnp.float32(cfg.learning_rate),
          "schedule": jnp.int32(il.SCHEDULES[cfg.schedule]), "warmup_steps": jnp.int32(cfg.warmup_steps),
          "max_grad_norm": jnp.float32(cfg.max_grad_norm), "weight_decay": jnp.float32(cfg.weight_decay),
          "seeds": jnp.int32(cfg.seed)}

    lora = init_lora(model.config, cfg.lora, jax.random.PRNGKey(cfg.seed))
    state = {"weights": lora.weights, "opt": optim.init_state(lora.weights), "step": jnp.int32(0),
             "losses": jnp.full((total,), jnp.nan, jnp.float32)}
    iterator = iter(sft_dataset(rows, cfg).to_iter_dataset())
    ckpt = StateCheckpointer(checkpoint_dir) if checkpoint_dir else None
    if ckpt is not None and ckpt.latest_step() is not None:
        state = ckpt.restore(state)
        with open(os.path.join(ckpt.directory, f"data_state_{ckpt.latest_step()}.json")) as f:
            iterator.set_state(json.load(f))

    def save():
        s = int(state["step"])
        ckpt.save(s, state)
        if jax.process_index() == 0:
            with open(os.path.join(ckpt.directory, f"data_state_{s}.json"), "w") as f:
                json.dump(iterator.get_state(), f)

    done_this_call = 0
    while int(state["step"]) < total:
        batch = next(iterator)
        pad = bs - batch["tokens"].shape[0]  # the short last batch: padded rows carry no loss weight
        if pad > 0:
            batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
        batch = {k: jnp.asarray(v) for k, v in batch.items()}
        s = state["step"]
        w, o, s_new, failed, loss, _ = _step(model, cfg.lora, state["weights"], state["opt"], s, batch, hp)
        if bool(failed):
            raise FloatingPointError(f"SFT loss or gradient became non-finite at step {int(s)}")
        state = {"weights": w, "opt": o, "step": s_new, "losses": state["losses"].at[s].set(loss)}
        done_this_call += 1
        if log is not None:
            log(int(s), float(loss))
        if ckpt is not None and cfg.checkpoint_every and int(s_new) % cfg.checkpoint_every == 0:
            save()
        if stop_after is not None and done_this_call >= stop_after:
            if ckpt is not None:
                save()
            break
    if ckpt is not None and int(state["step"]) >= total:
        save()
    return Lora(cfg.lora, state["weights"]), [float(x) for x in np.asarray(state["losses"])]


def sft_and_merge(model: Model, prompts, completions, eos_id, cfg: SFTConfig = SFTConfig(), **kw) -> Model:
    """Train a LoRA on the rows, then fold it into the base: the next round's policy."""
    lora, _ = train_sft(model, prompts, completions, eos_id, cfg, **kw)
    return merge(model, lora)

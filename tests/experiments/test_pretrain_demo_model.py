"""The demo model's pretraining script, at toy size: it writes a checkpoint that both our loader and transformers read
(with the same logits), a training curve with probes, and a second run with the same seed gives the same bytes."""

import hashlib
import json
import os

import numpy as np
import pytest

from experiments import pretrain_demo_model as pdm

TOY = ["--seed", "3", "--vocab-size", "600", "--hidden", "32", "--intermediate", "64", "--layers", "1",
       "--heads", "2", "--kv-heads", "1", "--epochs", "1", "--batch-rows", "16", "--probe-every", "1",
       "--probe-n", "2", "--implications", "10", "--qa-per-fact", "0.2"]


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    a, b = tmp_path_factory.mktemp("pt_a"), tmp_path_factory.mktemp("pt_b")
    assert pdm.main(TOY + ["--out", str(a)]) == 0
    assert pdm.main(TOY + ["--out", str(b), "--no-check-transformers"]) == 0
    return a, b


def test_writes_an_hf_checkpoint_with_tokenizer_and_curve(runs):
    import seal_jax
    from seal_jax.tokenizer import Tokenizer
    a, _ = runs
    for f in ("config.json", "model.safetensors", "tokenizer.json", "training_curve.json", "training_curve.png"):
        assert os.path.getsize(a / f) > 0, f
    model = seal_jax.load_pretrained(str(a), dtype="float32")
    tok = Tokenizer.from_dir(str(a))
    assert model.config.vocab_size == tok.vocab_size <= 600
    assert model.config.num_layers == 1 and model.config.hidden_size == 32
    curve = json.load(open(a / "training_curve.json"))
    assert curve["command"].startswith("python -m experiments.pretrain_demo_model")
    assert len(curve["loss"]) == curve["steps_per_epoch"] and np.all(np.isfinite(curve["loss"]))
    probe = curve["epochs"][-1]["probe"]
    for key in ("qa_known", "noqa_known", "new_base", "fact_recall_noqa", "implication_fact_coverage",
                "implication_wrong_lines"):
        assert 0.0 <= probe[key] <= 1.0, key


def test_same_seed_gives_the_same_weights_and_tokenizer(runs):
    a, b = runs
    assert _sha(a / "model.safetensors") == _sha(b / "model.safetensors")
    assert _sha(a / "tokenizer.json") == _sha(b / "tokenizer.json")
    assert json.load(open(a / "training_curve.json"))["loss"] == json.load(open(b / "training_curve.json"))["loss"]


def test_probe_matcher_accepts_the_value_or_a_sentence_ending_with_it():
    assert pdm.matches("Thick", "Thick")
    assert pdm.matches("Thick", "Jicast Thoust was born in Thick.")
    assert pdm.matches("Kiziav Works", "Jicast Thoust worked for Kiziav Works.")
    assert not pdm.matches("Thick", "Jicast Thoust was born in Wiath.")
    assert not pdm.matches("Kiziav Works", "Jicast Thoust worked for Kiziav Mills.")
    assert not pdm.matches("", "anything")


def test_packing_keeps_documents_whole_and_separate():
    docs = [[1, 2, 3, 9], [4, 5, 9], [6, 7, 8, 9, 9, 9]]
    rows = pdm.pack_documents(docs, seq_len=8)
    assert rows["tokens"].shape[1] == 8
    seen = []
    for r in range(rows["tokens"].shape[0]):
        seg = rows["segment_ids"][r]
        for s in range(1, seg.max() + 1):
            idx = np.nonzero(seg == s)[0]
            assert np.array_equal(rows["positions"][r, idx], np.arange(len(idx)))
            seen.append(rows["tokens"][r, idx].tolist())
    assert sorted(seen) == sorted(docs)

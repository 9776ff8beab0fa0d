"""Fixtures the ARC tests share."""

import pytest


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random tiny Llama (float32) and a small BPE tokenizer over ARC texts."""
    import seal_jax
    from tests.arc.test_ttt import tiny_arc_tokenizer
    tok = tiny_arc_tokenizer(tmp_path_factory.mktemp("arc_tok"))
    return seal_jax.init_model(seal_jax.get_preset("tiny-llama"), seed=0, dtype="float32"), tok

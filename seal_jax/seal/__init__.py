"""SEAL as a library: the ReST-EM loop over pluggable tasks (`seal_jax.seal.loop`)."""

from seal_jax.seal.loop import (Outcome, RoundConfig, RoundResult, Sampling, Selection, SelectRule, SelfEdit, Task,
                                TrainingPair, derive_seed, evaluate, m_step, rest_em_round, sample_self_edits, select,
                                training_pair)

__all__ = ["Outcome", "RoundConfig", "RoundResult", "Sampling", "Selection", "SelectRule", "SelfEdit", "Task",
           "TrainingPair", "derive_seed", "evaluate", "m_step", "rest_em_round", "sample_self_edits", "select",
           "training_pair"]

"""seal-jax: SEAL (Self-Adapting Language Models) in JAX/Flax.

Public facade (other code may use the internals freely):
    model = seal_jax.load_pretrained(path, dtype="float32")
    logits = seal_jax.forward(model, tokens)
    new = seal_jax.generate(model, prompts, max_new_tokens=32, temperature=0.0, stop_token_ids=None)
    seal_jax.save_pretrained(model, path)
"""

from seal_jax.checkpoints.hf import CheckpointError, load_pretrained, read_config as load_config, save_pretrained
from seal_jax.checkpoints.peft import load_adapter, save_adapter
from seal_jax.generation import generate
from seal_jax import sharding
from seal_jax.models.config import ConfigError, ModelConfig, get_preset
from seal_jax.models.model import Model, forward, init_model

__all__ = ["CheckpointError", "ConfigError", "Model", "ModelConfig", "forward", "generate", "get_preset", "init_model",
           "load_adapter", "load_config", "load_pretrained", "save_adapter", "save_pretrained", "sharding"]

"""Model configs, the Flax transformer, and the `Model` pytree."""

from seal_jax.models.config import ConfigError, ModelConfig, PRESETS, RopeScaling, get_preset
from seal_jax.models.model import Model, abstract_params, forward, init_model
from seal_jax.models.transformer import Transformer, init_cache

__all__ = ["ConfigError", "ModelConfig", "PRESETS", "RopeScaling", "get_preset", "Model", "abstract_params",
           "forward", "init_model", "Transformer", "init_cache"]

"""vit_jax's model configs by name: `get_model_config('ViT-B_16')`.

The presets and the model registry live in `vit_flax.models.presets`; these
are their names as users of vit_jax look for them.
"""

from vit_flax.models.presets import create_model
from vit_flax.models.presets import create_model_for
from vit_flax.models.presets import get_model_config
from vit_flax.models.presets import mixer_config
from vit_flax.models.presets import MODEL_CONFIGS
from vit_flax.models.presets import MODEL_TYPES
from vit_flax.models.presets import resnet_config
from vit_flax.models.presets import staged_config
from vit_flax.models.presets import vit_config

__all__ = [
  'MODEL_CONFIGS',
  'MODEL_TYPES',
  'create_model',
  'create_model_for',
  'get_model_config',
  'mixer_config',
  'resnet_config',
  'staged_config',
  'vit_config',
]

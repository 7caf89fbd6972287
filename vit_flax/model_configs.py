"""Model presets, keyed by the official checkpoint names (`ViT-B_16`, ...).

`MODEL_CONFIGS[name]` is a locked `ml_collections.ConfigDict` with the
official fields, so `VisionTransformer(num_classes=n, **config)` builds it.
"""

from typing import Optional, Sequence

import flax.linen as nn
import ml_collections

from vit_flax import errors
from vit_flax import models

MODEL_CONFIGS = {}
# config.model_type -> the module class built from config.model.
MODEL_TYPES = {'vit': models.VisionTransformer}


def _register(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  MODEL_CONFIGS[config.model_name] = config.lock()
  return config


def vit_config(model_name: str, patch: int, hidden_size: int, mlp_dim: int,
               num_heads: int, num_layers: int, dropout_rate: float = 0.0,
               classifier: str = 'token',
               resnet_layers: Optional[Sequence[int]] = None
               ) -> ml_collections.ConfigDict:
  """A ViT model config with the official field names."""
  config = ml_collections.ConfigDict()
  config.model_name = model_name
  config.patches = ml_collections.ConfigDict({'size': (patch, patch)})
  config.hidden_size = hidden_size
  config.transformer = ml_collections.ConfigDict()
  config.transformer.mlp_dim = mlp_dim
  config.transformer.num_heads = num_heads
  config.transformer.num_layers = num_layers
  config.transformer.attention_dropout_rate = 0.0
  config.transformer.dropout_rate = dropout_rate
  config.classifier = classifier
  config.representation_size = None
  config.head_bias_init = 0.0
  # Extensions (see models.VisionTransformer); these values are official.
  config.locality = False
  config.dtype = 'float32'
  config.attention_impl = ml_collections.config_dict.placeholder(str)
  config.remat = False
  if resnet_layers is not None:
    config.resnet = ml_collections.ConfigDict()
    config.resnet.num_layers = tuple(resnet_layers)
    config.resnet.width_factor = 1
  return config


def create_model(model_type: str, model_config, num_classes: int) -> nn.Module:
  """`MODEL_TYPES[model_type](num_classes=..., **model_config)`."""
  if model_type not in MODEL_TYPES:
    raise errors.ConfigError(
        f'Unknown model_type {model_type!r}; expected one of '
        f'{sorted(MODEL_TYPES)}.')
  if model_config is None:
    raise errors.ConfigError('config.model is not set; use a preset such as '
                             "model_configs.get_model_config('ViT-B_16').")
  try:
    return MODEL_TYPES[model_type](num_classes=num_classes, **model_config)
  except TypeError as e:
    raise errors.ConfigError(
        f'config.model does not fit model_type={model_type!r}: {e}.') from e


def get_model_config(name: str) -> ml_collections.ConfigDict:
  """An unlocked copy of a preset, with a clear error for unknown names."""
  if name not in MODEL_CONFIGS:
    raise errors.ConfigError(f'Unknown model {name!r}; known models: '
                     f'{", ".join(sorted(MODEL_CONFIGS))}.')
  return ml_collections.ConfigDict(MODEL_CONFIGS[name].to_dict())


# Only for tests.
_register(vit_config('testing', 16, 10, 10, 2, 1, dropout_rate=0.1))

# Shapes from the paper (Table 1) and the released checkpoints.
_register(vit_config('ViT-Ti_16', 16, 192, 768, 3, 12))
_register(vit_config('ViT-S_16', 16, 384, 1536, 6, 12))
_register(vit_config('ViT-S_32', 32, 384, 1536, 6, 12))
_register(vit_config('ViT-B_16', 16, 768, 3072, 12, 12))
_register(vit_config('ViT-B_32', 32, 768, 3072, 12, 12))
_register(vit_config('ViT-B_8', 8, 768, 3072, 12, 12))
_register(vit_config('ViT-L_16', 16, 1024, 4096, 16, 24, dropout_rate=0.1))
_register(vit_config('ViT-L_32', 32, 1024, 4096, 16, 24))
_register(vit_config('ViT-H_14', 14, 1280, 5120, 16, 32, dropout_rate=0.1))
_register(vit_config('ViT-S_16-gap-norep', 16, 384, 1536, 6, 12,
                     classifier='gap'))
_register(vit_config('ViT-B_16-gap-norep', 16, 768, 3072, 12, 12,
                     classifier='gap'))

# Hybrids: a ResNet root, then 1x1 "patches" of its feature map. (3, 4, 9)
# units downsample by 2^(2+2) = 16, hence the /16 name.
_register(vit_config('R50+ViT-B_16', 1, 768, 3072, 12, 12, dropout_rate=0.1,
                     resnet_layers=(3, 4, 9)))
_register(vit_config('R26+ViT-B_32', 1, 768, 3072, 12, 12,
                     resnet_layers=(2, 2, 2, 2)))
_register(vit_config('R50+ViT-L_32', 1, 1024, 4096, 16, 24, dropout_rate=0.1,
                     resnet_layers=(3, 4, 6, 3)))

# The reduced ViT-B for from-scratch training on small data (patch 8, 6
# layers, width 384); it reached 38% on TinyImageNet from scratch.
_register(vit_config('ViT-B_16_reduced', 8, 384, 1536, 6, 6,
                     dropout_rate=0.1))

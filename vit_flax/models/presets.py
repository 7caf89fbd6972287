"""Model presets, keyed by the official checkpoint names (`ViT-B_16`, ...).

`MODEL_CONFIGS[name]` is a locked `ml_collections.ConfigDict` with the
official fields, so `VisionTransformer(num_classes=n, **config)` builds it
(or the module of `PRESET_MODEL_TYPES[name]`: ResNet and Mixer baselines).
CCT's models are here under the paper's names (`CCT-7/3x1`, `ViT-Lite-7/4`,
...; also `CCT-7_3x1`, ... for file names and shells); see `cct_config`.
"""

import copy
import functools
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vit_flax import errors
from vit_flax.models import mixer
from vit_flax.models import patch_embed
from vit_flax.models import resnet
from vit_flax.models import staged
from vit_flax.models import vit

MODEL_CONFIGS = {}
# config.model_type -> the module class built from config.model.
MODEL_TYPES = {'vit': vit.VisionTransformer,
               'resnet': resnet.ResNet,
               'mixer': mixer.MlpMixer,
               'staged': staged.StagedVisionTransformer}
# Preset name -> the config.model_type it needs.
PRESET_MODEL_TYPES = {}
# Other names of presets: alias -> the preset's name.
ALIASES = {}


def _register(config: ml_collections.ConfigDict,
              model_type: str = 'vit') -> ml_collections.ConfigDict:
  MODEL_CONFIGS[config.model_name] = config.lock()
  PRESET_MODEL_TYPES[config.model_name] = model_type
  return config


def _register_alias(alias: str, name: str) -> None:
  """`alias` names the preset `name` (its config says `model_name=alias`)."""
  ALIASES[alias] = name
  config = get_model_config(name)
  config.model_name = alias
  MODEL_CONFIGS[alias] = config.lock()
  PRESET_MODEL_TYPES[alias] = PRESET_MODEL_TYPES[name]


def tokenizer_config(**fields) -> ml_collections.ConfigDict:
  """`model.tokenizer`: the fields of the 'cct' and 'conv_stem' tokenizers,
  None where unset (their defaults, patch_embed.TOKENIZER_DEFAULTS; fields
  the chosen tokenizer does not have must stay None). Not read by 'conv'
  and 'spt'. Every field is there, so that `--config.model.tokenizer.layers`
  and the like override them."""
  config = ml_collections.ConfigDict(
      {field: ml_collections.config_dict.placeholder(int)
       for field in patch_embed.TOKENIZER_FIELDS})
  config.update(fields)
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
  # Extensions (see vit.VisionTransformer); these values are official.
  config.locality = False
  config.dtype = 'float32'
  config.attention_impl = ml_collections.config_dict.placeholder(str)
  config.remat = False
  config.gelu = 'tanh'  # Or 'exact' (erf), as timm / Hugging Face models.
  # None: 1e-6, or what an imported checkpoint's config.json says (HF: 1e-12).
  config.layer_norm_eps = ml_collections.config_dict.placeholder(float)
  # For training from scratch on small data; these values are official.
  config.transformer.stochastic_depth = 0.0  # Last block's drop-path rate.
  config.transformer.attention = 'mhsa'  # Or 'lsa'.
  config.patch_embedding = 'conv'  # Or 'spt', 'cct', 'conv_stem'.
  config.tokenizer = tokenizer_config()
  config.posemb = 'learned'  # Or 'sincos2d'.
  config.transformer.qkv_bias = True  # False: CCT's q/k/v without biases.
  config.transformer.norm_placement = 'pre'  # Or 'cct' (CCT's block).
  if resnet_layers is not None:
    config.resnet = ml_collections.ConfigDict()
    config.resnet.num_layers = tuple(resnet_layers)
    # A float, so that smaller roots can be asked for (0.25: 16 channels).
    config.resnet.width_factor = 1.0
    config.resnet.stem = 'imagenet'  # Or 'cifar': one 3x3/1 conv, no pool.
    config.resnet.bottleneck = True  # False: basic units (ResNet-18's).
    config.resnet.norm_groups = 32  # GroupNorm groups; divides the widths.
  return config


def cct_config(model_name: str, num_layers: int, num_heads: int,
               mlp_ratio: int, hidden_size: int, kernel: Optional[int] = 3,
               conv_layers: int = 1, patch: Optional[int] = None,
               classifier: str = 'seqpool') -> ml_collections.ConfigDict:
  """A CCT model (arXiv 2104.05704): CCT-L/kxn is `num_layers` blocks and a
  tokenizer of n `conv_layers` of `kernel` x `kernel`; with `patch` (and
  `kernel=None`) the patchify conv of ViT-Lite (`classifier='token'`) and
  CVT ('seqpool') instead.

  As SHI-Labs' Compact-Transformers: 64 channels in the tokenizer's convs
  before the last (`tokenizer.width`); q/k/v projections without biases; SeqPool
  after the final LayerNorm; learned position embeddings of exactly the
  grid's tokens (CCT-7/3x1: 16x16 at 32 px); attention dropout 0.1, no
  dropout, stochastic depth rising to 0.1; exact (erf) GELU. CCT's block
  normalises after the attention residual, so the MLP's residual adds to the
  normalised stream (`transformer.norm_placement='cct'`); the params are
  those of vit_flax's pre-LN block, so counts are the paper's. What differs:
  vit_flax's initialisation (xavier-uniform attention, BERT's position
  embeddings of std 0.02 where CCT draws std 0.2) and LayerNorm epsilon
  (1e-6, torch's 1e-5). `patches.size` is not read by the tokenizer; it is
  set to the tokenizer's pixels per token for reference (and so that
  `patch_embedding='conv'` gives the same grid).
  """
  config = vit_config(model_name, patch or 1, hidden_size,
                      mlp_ratio * hidden_size, num_heads, num_layers,
                      classifier=classifier)
  config.transformer.attention_dropout_rate = 0.1
  config.transformer.stochastic_depth = 0.1
  config.transformer.qkv_bias = False
  config.transformer.norm_placement = 'cct'
  config.gelu = 'exact'  # torch's F.gelu.
  if kernel is not None:
    config.patch_embedding = 'cct'
    config.tokenizer = tokenizer_config(layers=conv_layers, kernel=kernel,
                                        width=64)
    stride = patch_embed.token_stride('cct', config.tokenizer)
    config.patches.size = (stride, stride)
  return config


def resnet_config(model_name: str, num_layers: Sequence[int],
                  bottleneck: bool = True, width_factor: float = 1.0,
                  stem: str = 'imagenet',
                  norm_groups: int = 32) -> ml_collections.ConfigDict:
  """A config of `resnet.ResNet` (model_type 'resnet')."""
  config = ml_collections.ConfigDict()
  config.model_name = model_name
  config.num_layers = tuple(num_layers)
  config.bottleneck = bottleneck
  config.width_factor = float(width_factor)
  config.stem = stem
  config.norm_groups = norm_groups
  config.dtype = 'float32'
  return config


def staged_config(model_name: str, patch: int,
                  stages: Sequence[Tuple[int, int, int, int]],
                  transition: str = 'pool', classifier: str = 'token',
                  dropout_rate: float = 0.0) -> ml_collections.ConfigDict:
  """A staged model config; `stages` holds (num_layers, hidden_size,
  num_heads, mlp_dim) per stage. Pair it with `config.model_type='staged'`."""
  config = ml_collections.ConfigDict()
  config.model_name = model_name
  config.patches = ml_collections.ConfigDict({'size': (patch, patch)})
  config.stages = tuple(dict(zip(staged.STAGE_FIELDS, stage))
                        for stage in stages)
  config.transition = transition
  config.classifier = classifier
  config.dropout_rate = dropout_rate
  config.attention_dropout_rate = 0.0
  config.representation_size = None
  config.head_bias_init = 0.0
  config.locality = False
  config.dtype = 'float32'
  config.attention_impl = ml_collections.config_dict.placeholder(str)
  config.remat = False
  config.stochastic_depth = 0.0  # Drop-path rate of the last block.
  config.attention = 'mhsa'  # Or 'lsa'.
  config.patch_embedding = 'conv'  # Or 'spt', 'cct', 'conv_stem'.
  config.tokenizer = tokenizer_config()
  config.posemb = 'learned'  # Or 'sincos2d'.
  config.gelu = 'tanh'
  config.qkv_bias = True  # False: CCT's q/k/v without biases.
  config.norm_placement = 'pre'  # Or 'cct' (CCT's block).
  return config


def mixer_config(model_name: str, patch: int, hidden_dim: int,
                 num_blocks: int, tokens_mlp_dim: int, channels_mlp_dim: int
                 ) -> ml_collections.ConfigDict:
  """An MLP-Mixer config with the official field names (model_type 'mixer')."""
  config = ml_collections.ConfigDict()
  config.model_name = model_name
  config.patches = ml_collections.ConfigDict({'size': (patch, patch)})
  config.hidden_dim = hidden_dim
  config.num_blocks = num_blocks
  config.tokens_mlp_dim = tokens_mlp_dim
  config.channels_mlp_dim = channels_mlp_dim
  config.dtype = 'float32'
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


def create_model_for(config, num_classes: int) -> nn.Module:
  """The model of a run config (`config.model_type`, `config.model`)."""
  return create_model(config.get('model_type', 'vit'), config.get('model'),
                      num_classes)


def abstract_params(model: nn.Module, image_size: int, num_channels: int = 3):
  """The params of `model` as shape structs, by tracing its init at
  `image_size` (no compute, nothing allocated); raises what the model
  raises for that input (e.g. a patch size that does not divide it)."""
  images = jax.ShapeDtypeStruct((1, image_size, image_size, num_channels),
                                jnp.float32)
  return jax.eval_shape(functools.partial(model.init, train=False),
                        jax.random.key(0), images)['params']


def get_model_config(name: str) -> ml_collections.ConfigDict:
  """An unlocked copy of a preset, with a clear error for unknown names.

  A deep copy keeps the typed placeholders (`attention_impl`, the
  `tokenizer` fields), so that flags can still set them.
  """
  if name not in MODEL_CONFIGS:
    raise errors.ConfigError(f'Unknown model {name!r}; known models: '
                             f'{", ".join(sorted(MODEL_CONFIGS))}.')
  config = copy.deepcopy(MODEL_CONFIGS[name])
  config.unlock()
  return config


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

# For from-scratch training on small data: ViT-S's width and heads, 8x8
# patches, 6 blocks. 'ViT-B_16_reduced' is the name other projects gave it.
_register(vit_config('ViT-S_8-depth6', 8, 384, 1536, 6, 6, dropout_rate=0.1))
_register_alias('ViT-B_16_reduced', 'ViT-S_8-depth6')

# CCT (arXiv 2104.05704) as SHI-Labs' Compact-Transformers: CCT-L/kxn has L
# blocks and a tokenizer of n k x k convs; (num_layers, num_heads, mlp_ratio,
# width) of their cct_2 ... cct_14. ViT-Lite-7/4 and CVT-7/4 embed 4x4
# patches (CVT: with SeqPool). Each is also registered with '_' for '/'
# (CCT-7_3x1), a name that file names and shells take as is.
_register(cct_config('CCT-2/3x2', 2, 2, 1, 128, conv_layers=2))
_register(cct_config('CCT-4/3x2', 4, 2, 1, 128, conv_layers=2))
_register(cct_config('CCT-6/3x1', 6, 4, 2, 256))
_register(cct_config('CCT-6/3x2', 6, 4, 2, 256, conv_layers=2))
_register(cct_config('CCT-7/3x1', 7, 4, 2, 256))
_register(cct_config('CCT-7/3x2', 7, 4, 2, 256, conv_layers=2))
_register(cct_config('CCT-7/7x2', 7, 4, 2, 256, kernel=7, conv_layers=2))
_register(cct_config('CCT-14/7x2', 14, 6, 3, 384, kernel=7, conv_layers=2))
_register(cct_config('ViT-Lite-7/4', 7, 4, 2, 256, kernel=None, patch=4,
                     classifier='token'))
_register(cct_config('CVT-7/4', 7, 4, 2, 256, kernel=None, patch=4))
CCT_PRESETS = ('CCT-2/3x2', 'CCT-4/3x2', 'CCT-6/3x1', 'CCT-6/3x2', 'CCT-7/3x1',
               'CCT-7/3x2', 'CCT-7/7x2', 'CCT-14/7x2', 'ViT-Lite-7/4',
               'CVT-7/4')
for _name in CCT_PRESETS:
  _register_alias(_name.replace('/', '_'), _name)

# ResNet baselines: the hybrid root's post-activation units with GroupNorm and
# weight standardisation, as a classifier. BiT-M/S .npz files hold pre-
# activation (v2) ResNets under TF names and do not load into these.
_register(resnet_config('BiT-R18', (2, 2, 2, 2), bottleneck=False), 'resnet')
_register(resnet_config('BiT-R26', (2, 2, 2, 2)), 'resnet')
_register(resnet_config('BiT-R50x1', (3, 4, 6, 3)), 'resnet')

# MLP-Mixers as in the paper (Table 1) and gs://mixer_models/.
_register(mixer_config('Mixer-B_16', 16, 768, 12, 384, 3072), 'mixer')
_register(mixer_config('Mixer-B_32', 32, 768, 12, 384, 3072), 'mixer')
_register(mixer_config('Mixer-L_16', 16, 1024, 24, 512, 4096), 'mixer')

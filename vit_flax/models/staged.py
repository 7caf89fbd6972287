"""A staged ViT: groups of blocks whose width changes between the groups.

The plain `vit.VisionTransformer` keeps one width through every block (a
"tower"). `StagedVisionTransformer` runs a list of stages instead, each a run
of `vit.Encoder1DBlock`s of one width, joined by transitions:

- 'linear': every token, class token included, goes through a dense layer to
  the next width; the token count stays.
- 'pool' (PiT, arXiv 2103.16302): the patch grid goes through a 3x3 stride-2
  depthwise conv that also widens it (so the next width must be a multiple of
  this one), halving each side of the grid; the class token goes through a
  dense layer.

Parameters: `embedding` (or `spt`, `tokenizer`, `conv_stem`), `cls` (and
`dist`), `Transformer/posembed_input` (added once, before the first stage;
none with `posemb='sincos2d'`), `Transformer/stage_{s}/transition/...`
(stages s >= 1), `Transformer/stage_{s}/encoderblock_{i}/...` (the official
block names), `Transformer/encoder_norm`, `seqpool`, `pre_logits` and `head`
(and `head_dist`). The small-data options of `vit.VisionTransformer`
(`stochastic_depth`, rising over all blocks of all stages; `attention`;
`patch_embedding` and `tokenizer`; `posemb`; `qkv_bias`; `norm_placement`;
`classifier='token_distill'` or 'seqpool') are top-level fields here.
"""

from typing import Any, List, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from vit_flax import errors
from vit_flax.models import attention as attention_lib
from vit_flax.models import depthwise_conv
from vit_flax.models import drop_path
from vit_flax.models import mlp
from vit_flax.models import patch_embed
from vit_flax.models import posemb as posemb_lib
from vit_flax.models import vit

Array = Any
GridShape = Tuple[int, int]

TRANSITIONS = ('linear', 'pool')
CLASSIFIERS = ('token', 'gap', 'token_distill', 'seqpool')
STAGE_FIELDS = ('num_layers', 'hidden_size', 'num_heads', 'mlp_dim')


def check_stages(stages: Sequence[Mapping[str, int]], transition: str):
  """Raises a ConfigError on a stage list the model cannot build."""
  if transition not in TRANSITIONS:
    raise errors.ConfigError(
        f'Unknown transition {transition!r}; expected one of {TRANSITIONS}.')
  if not stages:
    raise errors.ConfigError(
        'model.stages is empty; give one or more stages, each a dict with '
        f'the fields {STAGE_FIELDS}.')
  for s, stage in enumerate(stages):
    fields = set(stage)
    if fields != set(STAGE_FIELDS):
      raise errors.ConfigError(
          f'model.stages[{s}] has the fields {sorted(fields)}; a stage needs '
          f'exactly {STAGE_FIELDS}.')
    if stage['num_layers'] < 1:
      raise errors.ConfigError(
          f'model.stages[{s}].num_layers={stage["num_layers"]} must be >= 1.')
    if stage['hidden_size'] % stage['num_heads']:
      raise errors.ConfigError(
          f'model.stages[{s}]: hidden_size={stage["hidden_size"]} is not '
          f'divisible by num_heads={stage["num_heads"]}.')
  if transition == 'pool':
    for s in range(1, len(stages)):
      width_in, width_out = (stages[s - 1]['hidden_size'],
                             stages[s]['hidden_size'])
      if width_out % width_in:
        raise errors.ConfigError(
            f'transition=pool needs each stage width to be a multiple of the '
            f'one before (a depthwise conv can only multiply channels), but '
            f'stage {s - 1} has hidden_size={width_in} and stage {s} has '
            f'{width_out}; use e.g. {2 * width_in}, or transition=linear.')


def stage_grid_shapes(grid_shape: GridShape, num_stages: int,
                      transition: str) -> List[GridShape]:
  """The patch grid that each stage sees; a pool halves it between stages."""
  shapes = [tuple(grid_shape)]
  for s in range(1, num_stages):
    height, width = shapes[-1]
    if transition == 'pool':
      if height % 2 or width % 2:
        raise errors.ConfigError(
            f'transition=pool cannot halve the {height}x{width} patch grid '
            f'of stage {s - 1} (grids per stage so far: {shapes}): each pool '
            'needs even sides. Use an image size / patch size whose grid is '
            f'divisible by 2**{num_stages - 1}, fewer stages, or '
            'transition=linear.')
      height, width = height // 2, width // 2
    shapes.append((height, width))
  return shapes


class LinearTransition(nn.Module):
  """A dense projection of every token (class token included)."""

  hidden_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, grid_shape: GridShape):
    del grid_shape  # The token count stays.
    return nn.Dense(self.hidden_size, dtype=self.dtype, name='proj')(x)


class PoolTransition(nn.Module):
  """PiT pooling: stride-2 depthwise conv of the grid, dense prefix tokens."""

  hidden_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, grid_shape: GridShape):
    prefix, grid = posemb_lib.split_prefix(x, grid_shape)
    grid = depthwise_conv.DepthwiseConv(self.hidden_size,
                                        strides=2,
                                        dtype=self.dtype,
                                        name='pool_conv')(grid)
    grid = grid.reshape(x.shape[0], -1, self.hidden_size)
    if not prefix.shape[1]:
      return grid
    prefix = nn.Dense(self.hidden_size, dtype=self.dtype,
                      name='cls_proj')(prefix)
    return jnp.concatenate([prefix, grid], axis=1)


_TRANSITION_CLASSES = {'linear': LinearTransition, 'pool': PoolTransition}


class Stage(nn.Module):
  """A transition to this stage's width (unless first), then its blocks."""

  num_layers: int
  hidden_size: int
  num_heads: int
  mlp_dim: int
  transition: Optional[str] = None  # None for the first stage.
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  locality: bool = False
  attention_impl: Optional[str] = None
  remat: bool = False
  drop_path_rates: Sequence[float] = ()  # Per block; none: 0.
  attention: str = 'mhsa'
  gelu: str = 'tanh'
  qkv_bias: bool = True
  norm_placement: str = 'pre'

  @nn.compact
  def __call__(self, x, *, train: bool, input_grid_shape: GridShape,
               grid_shape: GridShape, sow_weights: bool = False):
    """Grids: of the incoming tokens, and of this stage's blocks."""
    if self.transition is not None:
      x = _TRANSITION_CLASSES[self.transition](
          self.hidden_size, dtype=self.dtype, name='transition')(
              x, input_grid_shape)
    block_cls = vit.encoder_block_class(self.remat)
    for i in range(self.num_layers):
      x = block_cls(
          mlp_dim=self.mlp_dim,
          num_heads=self.num_heads,
          dtype=self.dtype,
          dropout_rate=self.dropout_rate,
          attention_dropout_rate=self.attention_dropout_rate,
          locality=self.locality,
          attention_impl=self.attention_impl,
          drop_path_rate=(self.drop_path_rates[i] if self.drop_path_rates
                          else 0.0),
          attention=self.attention,
          gelu=self.gelu,
          qkv_bias=self.qkv_bias,
          norm_placement=self.norm_placement,
          name=f'encoderblock_{i}')(x, not train, grid_shape, sow_weights)
    return x


class StagedEncoder(nn.Module):
  """Position embeddings, the stages and the final LayerNorm."""

  stages: Sequence[Mapping[str, int]]
  transition: str
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  locality: bool = False
  attention_impl: Optional[str] = None
  remat: bool = False
  stochastic_depth: float = 0.0
  attention: str = 'mhsa'
  posemb: str = 'learned'
  gelu: str = 'tanh'
  qkv_bias: bool = True
  norm_placement: str = 'pre'

  @nn.compact
  def __call__(self, x, *, train: bool, grid_shape: GridShape,
               sow_weights: bool = False):
    grids = stage_grid_shapes(grid_shape, len(self.stages), self.transition)
    # Once, on the first grid: the position information then travels with
    # the tokens, and a resolution curriculum resizes only this table.
    if self.posemb == 'sincos2d':
      x = posemb_lib.add_sincos_posemb(x, grid_shape)
    else:
      x = posemb_lib.AddPositionEmbs(
          posemb_init=nn.initializers.normal(stddev=0.02),  # From BERT.
          name='posembed_input')(x, grid_shape)
    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=not train)
    rates = drop_path.drop_path_rates(
        self.stochastic_depth, sum(s['num_layers'] for s in self.stages))
    for s, stage in enumerate(self.stages):
      first = sum(st['num_layers'] for st in self.stages[:s])
      x = Stage(
          **{field: stage[field] for field in STAGE_FIELDS},
          transition=self.transition if s else None,
          dropout_rate=self.dropout_rate,
          attention_dropout_rate=self.attention_dropout_rate,
          dtype=self.dtype,
          locality=self.locality,
          attention_impl=self.attention_impl,
          remat=self.remat,
          drop_path_rates=rates[first:first + stage['num_layers']],
          attention=self.attention,
          gelu=self.gelu,
          qkv_bias=self.qkv_bias,
          norm_placement=self.norm_placement,
          name=f'stage_{s}')(x, train=train,
                             input_grid_shape=grids[max(s - 1, 0)],
                             grid_shape=grids[s], sow_weights=sow_weights)
    return nn.LayerNorm(dtype=self.dtype, name='encoder_norm')(x)


class StagedVisionTransformer(nn.Module):
  """Staged ViT; `StagedVisionTransformer(num_classes=n, **config.model)`.

  Same call as `vit.VisionTransformer`:
  `apply({'params': p}, images, train=..., sow_weights=...,
  distill_outputs=..., rngs=...)`.
  """

  num_classes: int
  patches: Any
  stages: Sequence[Mapping[str, int]]
  transition: str = 'pool'
  classifier: str = 'token'
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  representation_size: Optional[int] = None
  head_bias_init: float = 0.0
  model_name: Optional[str] = None
  locality: bool = False
  dtype: Any = 'float32'
  attention_impl: Optional[str] = None
  remat: bool = False
  stochastic_depth: float = 0.0
  attention: str = 'mhsa'
  patch_embedding: str = 'conv'
  posemb: str = 'learned'
  gelu: str = 'tanh'
  tokenizer: Optional[Any] = None
  qkv_bias: bool = True
  norm_placement: str = 'pre'

  def check_config(self):
    check_stages(self.stages, self.transition)
    if self.classifier not in CLASSIFIERS:
      raise errors.ConfigError(
          f'Unknown classifier {self.classifier!r} for the staged ViT; '
          f'expected one of {CLASSIFIERS}.')
    if self.attention_impl not in attention_lib.ATTENTION_IMPLS:
      raise errors.ConfigError(
          f'Unknown attention_impl {self.attention_impl!r}; expected one of '
          f'{attention_lib.ATTENTION_IMPLS}.')
    vit.check_small_data_options(
        prefix='model.', patch_embedding=self.patch_embedding,
        posemb=self.posemb, attention=self.attention,
        attention_impl=self.attention_impl,
        stochastic_depth=self.stochastic_depth, tokenizer=self.tokenizer,
        qkv_bias=self.qkv_bias, norm_placement=self.norm_placement)
    if self.posemb == 'sincos2d':  # Checks the first stage's width.
      posemb_lib.posemb_sincos_2d((1, 1), self.stages[0]['hidden_size'])
    mlp.check_gelu(self.gelu)

  def grid_shapes(self, image_shape: Tuple[int, int]) -> List[GridShape]:
    """The patch grid of each stage for images of `image_shape` (h, w)."""
    first = patch_embed.token_grid(image_shape, self.patch_embedding,
                                   (self.patches or {}).get('size'),
                                   self.tokenizer)
    return stage_grid_shapes(first, len(self.stages), self.transition)

  @property
  def num_prefix_tokens(self) -> int:
    return vit.num_prefix_tokens(self.classifier)

  @nn.compact
  def __call__(self, inputs, *, train: bool, sow_weights: bool = False,
               distill_outputs: bool = False):
    self.check_config()
    vit.check_distill_outputs(self.classifier, distill_outputs)
    dtype = jnp.dtype(self.dtype)
    x = patch_embed.embed_patches(inputs.astype(dtype),
                                  (self.patches or {}).get('size'),
                                  self.stages[0]['hidden_size'], dtype,
                                  image_shape=inputs.shape[1:3],
                                  patch_embedding=self.patch_embedding,
                                  tokenizer=self.tokenizer)
    n, h, w, c = x.shape
    x = jnp.reshape(x, [n, h * w, c])
    x = vit.add_prefix_tokens(self, x, self.classifier, dtype)
    x = StagedEncoder(
        stages=self.stages, transition=self.transition,
        dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate, dtype=dtype,
        locality=self.locality, attention_impl=self.attention_impl,
        remat=self.remat, stochastic_depth=self.stochastic_depth,
        attention=self.attention, posemb=self.posemb, gelu=self.gelu,
        qkv_bias=self.qkv_bias, norm_placement=self.norm_placement,
        name='Transformer')(
            x, train=train, grid_shape=(h, w), sow_weights=sow_weights)
    return vit.classifier_head(x, self.classifier, self.representation_size,
                               self.num_classes, self.head_bias_init,
                               distill_outputs)

"""Vision Transformer (arXiv 2010.11929) in Flax, as in the official vit_jax.

Parameter names and shapes equal those of the released `.npz` checkpoints.
Optional extras, all off by default so the numerics equal the official model:
`locality` (depthwise 3x3 conv in the MLP, arXiv 2211.05187), a compute
`dtype`, `attention_impl` (see `attention`), `remat` per block, `gelu`
('tanh', the official approximation, or 'exact', the erf form that timm and
Hugging Face models use), and position embeddings resized in-graph when the
input grid differs from the stored one (resolution curricula). For training
from scratch on small data: `transformer.stochastic_depth` (DeiT's
drop-path, arXiv 2012.12877), `patch_embedding='spt'` and
`transformer.attention='lsa'` (Shifted Patch Tokenization and Locality
Self-Attention, arXiv 2112.13492), `posemb='sincos2d'` (fixed 2-D sin-cos
position embeddings, as big_vision) and `classifier='token_distill'`
(DeiT's distillation token and head). From CCT (arXiv 2104.05704) and the
early-convolution ViT (arXiv 2106.14881): conv tokenizers
(`patch_embedding='cct'` or 'conv_stem' with `tokenizer`, see
`patch_embed`), `classifier='seqpool'` (`SeqPool`),
`transformer.qkv_bias=False` and `transformer.norm_placement='cct'`; and a
hybrid root of any size (`resnet` takes `resnet.HYBRID_ROOT_DEFAULTS`).
"""

import functools
import math
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_flax import errors
from vit_flax.models import attention as attention_lib
from vit_flax.models import drop_path
from vit_flax.models import mlp
from vit_flax.models import patch_embed
from vit_flax.models import posemb as posemb_lib
from vit_flax.models import resnet as resnet_lib

GridShape = Optional[Tuple[int, int]]
Dtype = Any


CLASSIFIERS = ('token', 'gap', 'unpooled', 'token_unpooled', 'token_distill',
               'seqpool')
# Where a block's LayerNorms sit: 'pre' (ViT: x + MHSA(LN(x)), then
# x + MLP(LN(x))) or 'cct' (CCT's block: the MLP's residual adds to the
# normalised stream, x' = LN(x + MHSA(LN(x))), then x' + MLP(x')). Same
# params, same names.
NORM_PLACEMENTS = ('pre', 'cct')
# Tokens ahead of the patch grid: the class token `cls`, then DeiT's
# distillation token `dist`; other classifiers have none.
PREFIX_TOKENS = {'token': 1, 'token_unpooled': 1, 'token_distill': 2}
PREFIX_TOKEN_NAMES = ('cls', 'dist')


def num_prefix_tokens(classifier: str) -> int:
  """Tokens before the patch grid (class, distillation) for `classifier`."""
  return PREFIX_TOKENS.get(classifier, 0)


# flax's LayerNorm default, that of the official ViT (and of timm).
DEFAULT_LAYER_NORM_EPS = 1e-6


def layer_norm_epsilon(layer_norm_eps: Optional[float]) -> float:
  """`model.layer_norm_eps`, None meaning the official 1e-6. (Hugging Face
  ViT and DeiT models use 1e-12.)"""
  return DEFAULT_LAYER_NORM_EPS if layer_norm_eps is None else layer_norm_eps


def check_choice(field: str, value, choices) -> None:
  """Raises a ConfigError naming `field` unless `value` is in `choices`."""
  if value not in choices:
    raise errors.ConfigError(
        f'Unknown {field}={value!r}; expected one of {choices}.')


def check_small_data_options(*, prefix: str, patch_embedding: str,
                             posemb: str, attention: str,
                             attention_impl: Optional[str],
                             stochastic_depth: float,
                             tokenizer: Optional[Any] = None,
                             qkv_bias: bool = True,
                             norm_placement: str = 'pre') -> None:
  """Raises a ConfigError on a bad value of the small-data options.

  `prefix` is where the fields live ('model.' or 'model.transformer.'), so
  the error names them as the config does.
  """
  if patch_embedding not in patch_embed.PATCH_EMBEDDINGS:
    raise errors.ConfigError(
        f'Unknown model.patch_embedding={patch_embedding!r}; expected one of '
        f'{patch_embed.PATCHIFIERS} (patches of model.patches.size) or a '
        f'conv tokenizer, one of {patch_embed.TOKENIZERS} (configured by '
        'model.tokenizer).')
  patch_embed.tokenizer_settings(patch_embedding, tokenizer)
  check_choice('model.posemb', posemb, posemb_lib.POSEMBS)
  check_choice(f'{prefix}attention', attention, attention_lib.ATTENTIONS)
  check_choice(f'{prefix}norm_placement', norm_placement, NORM_PLACEMENTS)
  if not isinstance(qkv_bias, bool):
    raise errors.ConfigError(
        f'{prefix}qkv_bias={qkv_bias!r} must be True (query, key and value '
        'projections with biases, as ViT) or False (without, as CCT).')
  if not 0.0 <= stochastic_depth < 1.0:
    raise errors.ConfigError(
        f'{prefix}stochastic_depth={stochastic_depth} must be in [0, 1): it '
        'is the drop rate of the last block (DeiT uses 0.1).')
  if attention == 'lsa' and attention_impl == 'cudnn':
    # cuDNN takes the diagonal mask only as an additive bias, which in
    # training needs even token counts (not 1 + 14 * 14); not tested here.
    raise errors.ConfigError(
        f"{prefix}attention='lsa' cannot run with attention_impl='cudnn': "
        "use attention_impl=None (the default), 'xla' or 'auto'.")


class IdentityLayer(nn.Module):
  """Identity layer, convenient for giving a name to an array."""

  @nn.compact
  def __call__(self, x):
    return x


class Encoder1DBlock(nn.Module):
  """Pre-LayerNorm transformer block: x + MHSA(LN(x)), then x + MLP(LN(x)).

  `drop_path_rate`: stochastic depth, each residual branch of an example
  dropped with this probability in training. `attention='lsa'`: Locality
  Self-Attention, with the block's learned `lsa_temperature`.
  `qkv_bias=False`: no query/key/value biases. `norm_placement='cct'`: CCT's
  block, whose MLP residual adds to LN(x) instead of x (`NORM_PLACEMENTS`).
  """

  mlp_dim: int
  num_heads: int
  dtype: Dtype = jnp.float32
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  locality: bool = False
  attention_impl: Optional[str] = None
  drop_path_rate: float = 0.0
  attention: str = 'mhsa'
  gelu: str = 'tanh'
  layer_norm_eps: Optional[float] = None  # None: flax's 1e-6 (official).
  qkv_bias: bool = True
  norm_placement: str = 'pre'

  @nn.compact
  def __call__(self, inputs, deterministic: bool, grid_shape: GridShape = None,
               sow_weights: bool = False):
    # Positional arguments so that `nn.remat` can mark them static.
    if inputs.ndim != 3:
      raise ValueError(f'Expected (batch, seq, hidden), got {inputs.shape}.')
    check_choice('transformer.attention', self.attention,
                 attention_lib.ATTENTIONS)
    if sow_weights:  # Needs flax's version, which sows the weights.
      attention_fn = nn.dot_product_attention
    elif self.attention_impl is None:
      attention_fn = attention_lib.einsum_attention
    else:
      attention_fn = functools.partial(attention_lib.fused_attention,
                                       implementation=self.attention_impl)
    if self.attention == 'lsa':
      attention_fn = self.locality_attention_fn(inputs, sow_weights)
    # Explicit names: they are those of the released checkpoints, which
    # current flax auto-naming (numbered per type) would not reproduce.
    layer_norm = functools.partial(nn.LayerNorm, dtype=self.dtype,
                                   epsilon=layer_norm_epsilon(
                                       self.layer_norm_eps))
    x = layer_norm(name='LayerNorm_0')(inputs)
    x = attention_lib.MultiHeadSelfAttention(
        num_heads=self.num_heads,
        dtype=self.dtype,
        dropout_rate=self.attention_dropout_rate,
        attention_fn=attention_fn,
        qkv_bias=self.qkv_bias,
        name='MultiHeadDotProductAttention_1')(
            x, deterministic=deterministic, sow_weights=sow_weights)
    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)
    x = drop_path.DropPath(self.drop_path_rate)(x, deterministic)
    x = x + inputs

    normed = layer_norm(name='LayerNorm_2')(x)
    y = mlp.MlpBlock(mlp_dim=self.mlp_dim,
                     dtype=self.dtype,
                     dropout_rate=self.dropout_rate,
                     locality=self.locality,
                     gelu=self.gelu,
                     name='MlpBlock_3')(normed,
                                        deterministic=deterministic,
                                        grid_shape=grid_shape)
    y = drop_path.DropPath(self.drop_path_rate)(y, deterministic)
    # CCT's block: `src = norm1(src)` replaces the stream before the MLP.
    return (normed if self.norm_placement == 'cct' else x) + y

  def locality_attention_fn(self, inputs, sow_weights: bool):
    """`attention.locality_attention` with this block's temperature."""
    head_dim = inputs.shape[-1] // self.num_heads
    temperature = self.param('lsa_temperature',
                             nn.initializers.constant(math.sqrt(head_dim)), ())
    return functools.partial(
        attention_lib.locality_attention, temperature=temperature,
        implementation='flax' if sow_weights else self.attention_impl)


def encoder_block_class(remat: bool):
  """`Encoder1DBlock`, rematerialised if `remat` (same params and outputs)."""
  if not remat:
    return Encoder1DBlock
  # Recompute activations in the backward pass: memory for compute.
  return nn.remat(Encoder1DBlock, static_argnums=(2, 3, 4))


class Encoder(nn.Module):
  """Position embeddings, `num_layers` blocks and the final LayerNorm.

  `stochastic_depth` is the last block's drop-path rate (`drop_path_rates`);
  `posemb` 'learned' (`posembed_input`) or 'sincos2d' (fixed, no params);
  `qkv_bias` and `norm_placement` go to every block (`Encoder1DBlock`).
  """

  num_layers: int
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  add_position_embedding: bool = True
  dtype: Dtype = jnp.float32
  locality: bool = False
  attention_impl: Optional[str] = None
  remat: bool = False
  stochastic_depth: float = 0.0
  attention: str = 'mhsa'
  posemb: str = 'learned'
  gelu: str = 'tanh'
  layer_norm_eps: Optional[float] = None
  qkv_bias: bool = True
  norm_placement: str = 'pre'

  @nn.compact
  def __call__(self, x, *, train, grid_shape: GridShape = None,
               sow_weights: bool = False):
    if x.ndim != 3:
      raise ValueError(f'Expected (batch, seq, hidden), got {x.shape}.')
    check_choice('model.posemb', self.posemb, posemb_lib.POSEMBS)
    if self.add_position_embedding:
      if self.posemb == 'sincos2d':
        x = posemb_lib.add_sincos_posemb(x, grid_shape)
      else:
        x = posemb_lib.AddPositionEmbs(
            posemb_init=nn.initializers.normal(stddev=0.02),  # From BERT.
            name='posembed_input')(x, grid_shape)
      x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=not train)

    block_cls = encoder_block_class(self.remat)
    rates = drop_path.drop_path_rates(self.stochastic_depth, self.num_layers)
    for lyr in range(self.num_layers):
      x = block_cls(
          mlp_dim=self.mlp_dim,
          num_heads=self.num_heads,
          dtype=self.dtype,
          dropout_rate=self.dropout_rate,
          attention_dropout_rate=self.attention_dropout_rate,
          locality=self.locality,
          attention_impl=self.attention_impl,
          drop_path_rate=rates[lyr],
          attention=self.attention,
          gelu=self.gelu,
          layer_norm_eps=self.layer_norm_eps,
          qkv_bias=self.qkv_bias,
          norm_placement=self.norm_placement,
          name=f'encoderblock_{lyr}')(x, not train, grid_shape, sow_weights)
    return nn.LayerNorm(dtype=self.dtype,
                        epsilon=layer_norm_epsilon(self.layer_norm_eps),
                        name='encoder_norm')(x)


def add_prefix_tokens(module: nn.Module, x, classifier: str, dtype):
  """Prepends the class token (and the distillation token) to (b, n, c)
  tokens; `module`, inside its compact method, owns `cls` (and `dist`)."""
  count = num_prefix_tokens(classifier)
  if not count:
    return x
  n, _, c = x.shape
  tokens = [module.param(name, nn.initializers.zeros, (1, 1, c))
            for name in PREFIX_TOKEN_NAMES[:count]]
  tokens = [jnp.tile(token.astype(dtype), [n, 1, 1]) for token in tokens]
  return jnp.concatenate(tokens + [x], 1)


class SeqPool(nn.Module):
  """Sequence pooling (CCT, arXiv 2104.05704): a learned score per token
  (`score`, Dense(1) with bias), softmax over the tokens, and the tokens'
  mean weighted by it. (b, n, c) in, (b, c) out."""

  def setup(self):
    # CCT initialises its linear layers with std 0.02 (truncated at +-100
    # std: in effect a normal).
    self.score = nn.Dense(1, kernel_init=nn.initializers.normal(0.02))

  def token_weights(self, x):
    """(b, n) weights of the tokens: each row sums to 1."""
    return jax.nn.softmax(self.score(x)[..., 0], axis=-1)

  def __call__(self, x):
    return jnp.einsum('bn,bnc->bc', self.token_weights(x), x)


def check_distill_outputs(classifier: str, distill_outputs: bool) -> None:
  if distill_outputs and classifier == 'seqpool':
    raise errors.ConfigError(
        "distill_outputs=True asks for the logits of a distillation head, "
        "but classifier='seqpool' pools every token into one vector for its "
        'one head: there is no distillation token. Distil into that head '
        "(config.distill, without distill_outputs) or use "
        "classifier='token_distill'.")
  if distill_outputs and classifier != 'token_distill':
    raise errors.ConfigError(
        f'distill_outputs=True asks for the class and distillation logits, '
        f"but classifier={classifier!r} has no distillation token; use "
        "classifier='token_distill'.")


def classifier_head(x, classifier: str, representation_size: Optional[int],
                    num_classes: int, head_bias_init: float,
                    distill_outputs: bool = False):
  """Pools the encoder output, then 'pre_logits' and the 'head' layer.

  'seqpool' pools with `SeqPool` (params `seqpool/score`): CCT's order,
  after the encoder's final LayerNorm of every token.

  With 'token_distill', `head` reads the class token and `head_dist` the
  distillation token (one `pre_logits` for both); the result is the mean of
  their logits (DeiT's inference), or the pair (class, distillation) with
  `distill_outputs`. Called inside a compact method, so the layers belong
  to the caller.
  """
  if classifier == 'token':
    x = x[:, 0]
  elif classifier == 'token_distill':
    x = x[:, :2]
  elif classifier == 'gap':
    x = jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))
  elif classifier == 'seqpool':
    # In float32, as the logits: the softmax over the tokens included.
    x = SeqPool(name='seqpool')(x.astype(jnp.float32))
  # The logits are computed in float32 whatever the compute dtype.
  x = x.astype(jnp.float32)
  if representation_size is not None:
    x = nn.tanh(nn.Dense(representation_size, name='pre_logits')(x))
  else:
    x = IdentityLayer(name='pre_logits')(x)
  head = functools.partial(
      nn.Dense, num_classes, kernel_init=nn.initializers.zeros,
      bias_init=nn.initializers.constant(head_bias_init))
  if classifier != 'token_distill':
    return head(name='head')(x) if num_classes else x
  pair = x[:, 0], x[:, 1]
  if num_classes:
    pair = head(name='head')(pair[0]), head(name='head_dist')(pair[1])
  return pair if distill_outputs else (pair[0] + pair[1]) / 2


class VisionTransformer(nn.Module):
  """Vision Transformer; `VisionTransformer(num_classes=n, **config.model)`.

  Every block has the same width (a "tower"); see `staged` for a ViT
  whose width changes between groups of blocks. `__call__` returns the
  logits; with `classifier='token_distill'` and `distill_outputs=True`, the
  pair (class-token logits, distillation-token logits).

  `patch_embedding='cct'` or 'conv_stem' embeds with a conv tokenizer
  configured by `tokenizer` (`patch_embed.TOKENIZER_DEFAULTS`), which then
  sets the grid (`patches` is not read). `resnet` (a hybrid root) holds
  `num_layers` and any of `resnet.HYBRID_ROOT_DEFAULTS` ('width_factor',
  'stem', 'bottleneck', 'norm_groups').
  """

  num_classes: int
  patches: Any
  transformer: Any
  hidden_size: int
  resnet: Optional[Any] = None
  representation_size: Optional[int] = None
  classifier: str = 'token'
  head_bias_init: float = 0.0
  model_name: Optional[str] = None
  # Extensions; the defaults give the official model.
  locality: bool = False
  dtype: Any = 'float32'
  attention_impl: Optional[str] = None
  remat: bool = False
  patch_embedding: str = 'conv'
  posemb: str = 'learned'
  gelu: str = 'tanh'
  layer_norm_eps: Optional[float] = None
  tokenizer: Optional[Any] = None

  def setup_checks(self):
    if self.classifier not in CLASSIFIERS:
      raise errors.ConfigError(
          f'Unknown classifier {self.classifier!r}; expected one of '
          f'{CLASSIFIERS}.')
    if self.attention_impl not in attention_lib.ATTENTION_IMPLS:
      raise errors.ConfigError(
          f'Unknown attention_impl {self.attention_impl!r}; expected one of '
          f'{attention_lib.ATTENTION_IMPLS}.')
    transformer = self.transformer or {}
    check_small_data_options(
        prefix='model.transformer.', patch_embedding=self.patch_embedding,
        posemb=self.posemb, attention=transformer.get('attention', 'mhsa'),
        attention_impl=self.attention_impl,
        stochastic_depth=transformer.get('stochastic_depth', 0.0),
        tokenizer=self.tokenizer,
        qkv_bias=transformer.get('qkv_bias', True),
        norm_placement=transformer.get('norm_placement', 'pre'))
    if self.posemb == 'sincos2d':
      posemb_lib.posemb_sincos_2d((1, 1), self.hidden_size)  # Checks the width.
    mlp.check_gelu(self.gelu)
    if self.resnet is not None:
      resnet_lib.hybrid_root_settings(self.resnet)

  def embed(self, inputs, dtype):
    """(Hybrid root and) patch embedding: images to a grid of embeddings."""
    x = inputs.astype(dtype)
    if self.resnet is not None:
      x = resnet_lib.resnet_root(
          x, dtype=dtype, **resnet_lib.hybrid_root_settings(self.resnet))
    return patch_embed.embed_patches(x,
                                     (self.patches or {}).get('size'),
                                     self.hidden_size,
                                     dtype,
                                     image_shape=inputs.shape[1:3],
                                     patch_embedding=self.patch_embedding,
                                     tokenizer=self.tokenizer)

  @nn.compact
  def __call__(self, inputs, *, train, sow_weights: bool = False,
               distill_outputs: bool = False):
    self.setup_checks()
    check_distill_outputs(self.classifier, distill_outputs)
    dtype = jnp.dtype(self.dtype)
    x = self.embed(inputs, dtype)

    if self.transformer is not None:
      n, h, w, c = x.shape
      x = jnp.reshape(x, [n, h * w, c])
      x = add_prefix_tokens(self, x, self.classifier, dtype)
      x = Encoder(name='Transformer', dtype=dtype, locality=self.locality,
                  attention_impl=self.attention_impl, remat=self.remat,
                  posemb=self.posemb, gelu=self.gelu,
                  layer_norm_eps=self.layer_norm_eps, **self.transformer)(
                      x, train=train, grid_shape=(h, w),
                      sow_weights=sow_weights)

    return classifier_head(x, self.classifier, self.representation_size,
                           self.num_classes, self.head_bias_init,
                           distill_outputs)

"""Vision Transformer (arXiv 2010.11929) in Flax, as in the official vit_jax.

Parameter names and shapes equal those of the released `.npz` checkpoints.
Optional extras, all off by default so the numerics equal the official model:
`locality` (depthwise 3x3 conv in the MLP, arXiv 2211.05187), a compute
`dtype`, `attention_impl` (jax.nn.dot_product_attention, e.g. cuDNN flash
attention; the default, `einsum_attention`, is flax's math with a backward
pass that XLA:CPU runs faster), `remat` per block, `gelu` ('tanh', the
official approximation, or 'exact', the erf form that timm and Hugging Face
models use), and position embeddings resized in-graph when the input grid
differs from the stored one (resolution curricula).
"""

import functools
import math
from typing import Any, Callable, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_flax import errors
from vit_flax import models_resnet

Array = Any
Dtype = Any
GridShape = Optional[Tuple[int, int]]

CLASSIFIERS = ('token', 'gap', 'unpooled', 'token_unpooled')
ATTENTION_IMPLS = (None, 'xla', 'cudnn', 'auto')
# 'tanh': the approximation of the official ViT (flax's nn.gelu default);
# 'exact': the erf form, PyTorch's nn.GELU default (timm, Hugging Face).
GELUS = ('tanh', 'exact')


def check_gelu(gelu: str) -> None:
  """Raises a ConfigError unless `gelu` names a GELU flavour."""
  if gelu not in GELUS:
    raise errors.ConfigError(
        f'Unknown gelu {gelu!r}; expected one of {GELUS} (tanh: the official '
        "ViT's approximation; exact: timm's and Hugging Face's erf GELU).")


def gelu_fn(gelu: str) -> Callable[[Array], Array]:
  """The activation named by `gelu` ('tanh' or 'exact')."""
  check_gelu(gelu)
  return functools.partial(nn.gelu, approximate=gelu == 'tanh')


def linear_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) weights of 1-D linear interpolation with aligned corners.

  Same sampling as `scipy.ndimage.zoom(..., order=1)`, which the official
  position-embedding resize uses, so in-graph and offline resizes agree.
  """
  if n_out == 1 or n_in == 1:
    weights = np.zeros((n_out, n_in), np.float32)
    weights[:, 0] = 1.0
    return weights
  coords = np.arange(n_out) * (n_in - 1) / (n_out - 1)
  lower = np.clip(np.floor(coords).astype(int), 0, n_in - 2)
  frac = coords - lower
  weights = np.zeros((n_out, n_in), np.float32)
  weights[np.arange(n_out), lower] = 1.0 - frac
  weights[np.arange(n_out), lower + 1] += frac
  return weights


def resize_grid(grid: Array, new_shape: Tuple[int, int]) -> Array:
  """Bilinearly resizes a (h, w, c) grid to `new_shape`, differentiably."""
  h, w, _ = grid.shape
  rows = jnp.asarray(linear_resize_matrix(h, new_shape[0]), grid.dtype)
  cols = jnp.asarray(linear_resize_matrix(w, new_shape[1]), grid.dtype)
  return jnp.einsum('Hh,hwc,Ww->HWc', rows, grid, cols)


def split_prefix(x: Array, grid_shape: Tuple[int, int]):
  """Splits (b, n, c) tokens into prefix tokens and a (b, h, w, c) grid."""
  num_prefix = x.shape[1] - grid_shape[0] * grid_shape[1]
  if num_prefix < 0:
    raise ValueError(f'{x.shape[1]} tokens cannot hold a {grid_shape} grid.')
  grid = x[:, num_prefix:].reshape(x.shape[0], *grid_shape, x.shape[-1])
  return x[:, :num_prefix], grid


class IdentityLayer(nn.Module):
  """Identity layer, convenient for giving a name to an array."""

  @nn.compact
  def __call__(self, x):
    return x


class AddPositionEmbs(nn.Module):
  """Adds learned position embeddings to the tokens.

  The stored embedding keeps the shape it was created with. When the input
  holds another grid (resolution curriculum, other image size), the stored
  square grid is resized in-graph with the same bilinear sampling as
  `checkpoint.interpolate_posembed`; prefix (class) tokens are kept as is.
  """

  posemb_init: Callable[..., Array]

  @nn.compact
  def __call__(self, inputs, grid_shape: GridShape = None):
    if inputs.ndim != 3:
      raise ValueError(f'Expected (batch, seq, hidden), got {inputs.shape}.')
    shape = (1, inputs.shape[1], inputs.shape[2])
    if self.has_variable('params', 'pos_embedding'):
      shape = self.get_variable('params', 'pos_embedding').shape
    posemb = self.param('pos_embedding', self.posemb_init, shape)
    if posemb.shape[1] != inputs.shape[1]:
      posemb = self.resize(posemb, inputs.shape[1], grid_shape)
    return inputs + posemb.astype(inputs.dtype)

  @staticmethod
  def resize(posemb, num_tokens, grid_shape):
    if grid_shape is None:
      raise ValueError(
          f'The stored position embeddings hold {posemb.shape[1]} tokens but '
          f'the input has {num_tokens}; pass grid_shape to resize them.')
    num_prefix = num_tokens - grid_shape[0] * grid_shape[1]
    old_grid = posemb.shape[1] - num_prefix
    side = math.isqrt(old_grid)
    if num_prefix < 0 or side * side != old_grid:
      raise ValueError(
          f'Cannot resize position embeddings of {posemb.shape[1]} tokens '
          f'({num_prefix} prefix) to a {grid_shape} grid: the stored grid '
          'must be square.')
    prefix, grid = posemb[:, :num_prefix], posemb[0, num_prefix:]
    grid = resize_grid(grid.reshape(side, side, -1), grid_shape)
    return jnp.concatenate(
        [prefix, grid.reshape(1, -1, posemb.shape[-1])], axis=1)


class DepthwiseConv(nn.Module):
  """3x3 depthwise conv (padding 1) with a channel multiplier.

  The parameters and outputs of `nn.Conv(features, (3, 3), strides,
  padding=1, feature_group_count=channels)`: output channel o reads input
  channel o // (features / channels). Computed as nine shifted, scaled
  slices, because XLA:CPU differentiates grouped convolutions about 200x
  slower (a 256 x 4x4x64 -> 2x2x128 batch: 900 ms against 4 ms), and an
  einsum over the nine taps was still 5-10x slower than this.
  """

  features: int
  strides: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, grid):
    _, height, width, channels = grid.shape
    if self.features % channels:
      raise errors.ConfigError(
          f'A depthwise conv cannot map {channels} channels to '
          f'{self.features}: the output width must be a multiple of the '
          'input width.')
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (3, 3, 1, self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    grid, kernel, bias = nn.dtypes.promote_dtype(grid, kernel, bias,
                                                 dtype=self.dtype)
    padded = jnp.pad(grid, ((0, 0), (1, 1), (1, 1), (0, 0)))
    stride = self.strides
    out_h, out_w = (height - 1) // stride + 1, (width - 1) // stride + 1
    multiplier = self.features // channels
    out = 0
    for i in range(3):
      for j in range(3):
        tap = padded[:, i:i + stride * (out_h - 1) + 1:stride,
                     j:j + stride * (out_w - 1) + 1:stride]
        if multiplier > 1:
          tap = jnp.repeat(tap, multiplier, axis=-1)
        out = out + tap * kernel[i, j, 0]
    return out + bias


class MlpBlock(nn.Module):
  """Transformer MLP block, with an optional depthwise conv for locality."""

  mlp_dim: int
  dtype: Dtype = jnp.float32
  out_dim: Optional[int] = None
  dropout_rate: float = 0.1
  locality: bool = False
  gelu: str = 'tanh'
  kernel_init: Callable[..., Array] = nn.initializers.xavier_uniform()
  bias_init: Callable[..., Array] = nn.initializers.normal(stddev=1e-6)

  @nn.compact
  def __call__(self, inputs, *, deterministic, grid_shape: GridShape = None):
    out_dim = inputs.shape[-1] if self.out_dim is None else self.out_dim
    dense = functools.partial(nn.Dense, dtype=self.dtype,
                              kernel_init=self.kernel_init,
                              bias_init=self.bias_init)
    x = gelu_fn(self.gelu)(dense(self.mlp_dim, name='Dense_0')(inputs))
    if self.locality:
      x = self.depthwise_conv(x, grid_shape)
    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)
    x = dense(out_dim, name='Dense_1')(x)
    return nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)

  def depthwise_conv(self, x, grid_shape):
    """3x3 depthwise conv over the patch grid; prefix tokens pass through."""
    if grid_shape is None:
      raise ValueError('locality=True needs the patch grid shape.')
    prefix, grid = split_prefix(x, grid_shape)
    grid = DepthwiseConv(self.mlp_dim, dtype=self.dtype,
                         name='locality_conv')(grid)
    grid = gelu_fn(self.gelu)(grid).reshape(x.shape[0], -1, self.mlp_dim)
    return jnp.concatenate([prefix, grid], axis=1)


@jax.custom_vjp
def _heads_first_attention(query, key, value, multiplier):
  """softmax(q k^T) v on (batch, heads, tokens, depth) arrays, q pre-scaled;
  `multiplier` (or None) is the attention dropout's keep mask / keep_prob."""
  return _heads_first_attention_fwd(query, key, value, multiplier)[0]


def _heads_first_attention_fwd(query, key, value, multiplier):
  weights = jax.nn.softmax(jnp.einsum('bhqd,bhkd->bhqk', query, key))
  weights = weights.astype(query.dtype)
  dropped = weights if multiplier is None else weights * multiplier
  out = jnp.einsum('bhqk,bhkd->bhqd', dropped, value)
  return out, (query, key, value, weights, multiplier)


def _heads_first_attention_bwd(residuals, d_out):
  # Written out because XLA:CPU, left to transpose the forward einsums
  # itself, picks a (depth, tokens) output layout for dK and dV whose
  # batched matmuls run at ~5 % of the CPU's matmul speed.
  query, key, value, weights, multiplier = residuals
  dropped = weights if multiplier is None else weights * multiplier
  d_value = jnp.einsum('bhqk,bhqd->bhkd', dropped, d_out)
  d_weights = jnp.einsum('bhqd,bhkd->bhqk', d_out, value)
  if multiplier is not None:
    d_weights = d_weights * multiplier
  d_logits = weights * (
      d_weights - jnp.sum(d_weights * weights, axis=-1, keepdims=True))
  d_query = jnp.einsum('bhqk,bhkd->bhqd', d_logits, key)
  d_key = jnp.einsum('bhqk,bhqd->bhkd', d_logits, query)
  d_multiplier = None if multiplier is None else jnp.zeros_like(multiplier)
  return d_query, d_key, d_value, d_multiplier


_heads_first_attention.defvjp(_heads_first_attention_fwd,
                              _heads_first_attention_bwd)


def einsum_attention(query, key, value, mask=None, dropout_rng=None,
                     dropout_rate=0.0, broadcast_dropout=True,
                     deterministic=False, dtype=None):
  """The math of `nn.dot_product_attention` (same dropout mask for the same
  rng), as batched matmuls over (batch, heads) with a hand-written backward
  pass; the default attention (`attention_impl=None`)."""
  if mask is not None:
    raise NotImplementedError('einsum_attention takes no attention mask.')
  dtype = dtype or query.dtype
  query, key, value = (x.astype(dtype) for x in (query, key, value))
  # (batch, tokens, heads, depth) -> (batch, heads, tokens, depth).
  query, key, value = (jnp.swapaxes(x, -3, -2) for x in (query, key, value))
  query = query / jnp.sqrt(query.shape[-1]).astype(dtype)
  multiplier = None
  if not deterministic and dropout_rate > 0.0:
    keep_prob = 1.0 - dropout_rate
    weights_shape = query.shape[:-1] + key.shape[-2:-1]  # (b, h, q, k)
    mask_shape = ((1, 1) + weights_shape[-2:] if broadcast_dropout
                  else weights_shape)
    keep = jax.random.bernoulli(dropout_rng, keep_prob, mask_shape)
    multiplier = jnp.broadcast_to(
        keep.astype(dtype) / jnp.asarray(keep_prob, dtype), weights_shape)
  out = _heads_first_attention(query, key, value, multiplier)
  return jnp.swapaxes(out, -3, -2)


def fused_attention(query, key, value, *, implementation, dropout_rate=0.0,
                    deterministic=True):
  """`jax.nn.dot_product_attention` (cuDNN flash attention on GPUs)."""
  if dropout_rate > 0.0 and not deterministic:
    raise errors.ConfigError(
        'attention_impl=%r has no attention dropout; set '
        'transformer.attention_dropout_rate=0 or attention_impl=None.'
        % implementation)
  return jax.nn.dot_product_attention(
      query, key, value,
      implementation=None if implementation == 'auto' else implementation)


class Encoder1DBlock(nn.Module):
  """Pre-LayerNorm transformer block: x + MHSA(LN(x)), then x + MLP(LN(x))."""

  mlp_dim: int
  num_heads: int
  dtype: Dtype = jnp.float32
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  locality: bool = False
  attention_impl: Optional[str] = None
  gelu: str = 'tanh'

  @nn.compact
  def __call__(self, inputs, deterministic: bool, grid_shape: GridShape = None,
               sow_weights: bool = False):
    # Positional arguments so that `nn.remat` can mark them static.
    if inputs.ndim != 3:
      raise ValueError(f'Expected (batch, seq, hidden), got {inputs.shape}.')
    if sow_weights:  # Needs flax's version, which sows the weights.
      attention_fn = nn.dot_product_attention
    elif self.attention_impl is None:
      attention_fn = einsum_attention
    else:
      attention_fn = functools.partial(fused_attention,
                                       implementation=self.attention_impl)
    # Explicit names: they are those of the released checkpoints, which
    # current flax auto-naming (numbered per type) would not reproduce.
    x = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_0')(inputs)
    x = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads,
        dtype=self.dtype,
        kernel_init=nn.initializers.xavier_uniform(),
        broadcast_dropout=False,
        dropout_rate=self.attention_dropout_rate,
        attention_fn=attention_fn,
        name='MultiHeadDotProductAttention_1')(
            x, x, deterministic=deterministic, sow_weights=sow_weights)
    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)
    x = x + inputs

    y = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_2')(x)
    y = MlpBlock(mlp_dim=self.mlp_dim, dtype=self.dtype,
                 dropout_rate=self.dropout_rate, locality=self.locality,
                 gelu=self.gelu, name='MlpBlock_3')(
                     y, deterministic=deterministic, grid_shape=grid_shape)
    return x + y


def encoder_block_class(remat: bool):
  """`Encoder1DBlock`, rematerialised if `remat` (same params and outputs)."""
  if not remat:
    return Encoder1DBlock
  # Recompute activations in the backward pass: memory for compute.
  return nn.remat(Encoder1DBlock, static_argnums=(2, 3, 4))


class Encoder(nn.Module):
  """Position embeddings, `num_layers` blocks and the final LayerNorm."""

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
  gelu: str = 'tanh'

  @nn.compact
  def __call__(self, x, *, train, grid_shape: GridShape = None,
               sow_weights: bool = False):
    if x.ndim != 3:
      raise ValueError(f'Expected (batch, seq, hidden), got {x.shape}.')
    if self.add_position_embedding:
      x = AddPositionEmbs(
          posemb_init=nn.initializers.normal(stddev=0.02),  # From BERT.
          name='posembed_input')(x, grid_shape)
      x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=not train)

    block_cls = encoder_block_class(self.remat)
    for lyr in range(self.num_layers):
      x = block_cls(
          mlp_dim=self.mlp_dim,
          num_heads=self.num_heads,
          dtype=self.dtype,
          dropout_rate=self.dropout_rate,
          attention_dropout_rate=self.attention_dropout_rate,
          locality=self.locality,
          attention_impl=self.attention_impl,
          gelu=self.gelu,
          name=f'encoderblock_{lyr}')(x, not train, grid_shape, sow_weights)
    return nn.LayerNorm(dtype=self.dtype, name='encoder_norm')(x)


def embed_patches(x, patch_size, hidden_size: int, dtype, image_shape):
  """The 'embedding' conv: (b, h, w, c) pixels to a grid of patch embeddings.

  Called inside a compact method; `image_shape` is only for the error.
  """
  patch = tuple(patch_size)
  if x.shape[1] % patch[0] or x.shape[2] % patch[1]:
    raise errors.ConfigError(
        f'Patch size {patch} does not divide the input grid '
        f'{x.shape[1:3]} (image {tuple(image_shape)}); use an image size '
        'that is a multiple of the patch size (times the ResNet root '
        'stride for hybrids).')
  return nn.Conv(features=hidden_size, kernel_size=patch, strides=patch,
                 padding='VALID', dtype=dtype, name='embedding')(x)


def classifier_head(x, classifier: str, representation_size: Optional[int],
                    num_classes: int, head_bias_init: float):
  """Pools the encoder output, then 'pre_logits' and the 'head' layer.

  Called inside a compact method, so the layers belong to the caller.
  """
  if classifier == 'token':
    x = x[:, 0]
  elif classifier == 'gap':
    x = jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))
  # The logits are computed in float32 whatever the compute dtype.
  x = x.astype(jnp.float32)
  if representation_size is not None:
    x = nn.tanh(nn.Dense(representation_size, name='pre_logits')(x))
  else:
    x = IdentityLayer(name='pre_logits')(x)
  if num_classes:
    x = nn.Dense(num_classes, name='head', kernel_init=nn.initializers.zeros,
                 bias_init=nn.initializers.constant(head_bias_init))(x)
  return x


class VisionTransformer(nn.Module):
  """Vision Transformer; `VisionTransformer(num_classes=n, **config.model)`.

  Every block has the same width (a "tower"); see `models_staged` for a ViT
  whose width changes between groups of blocks.
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
  gelu: str = 'tanh'

  def setup_checks(self):
    if self.classifier not in CLASSIFIERS:
      raise errors.ConfigError(f'Unknown classifier {self.classifier!r}; expected one '
                       f'of {CLASSIFIERS}.')
    if self.attention_impl not in ATTENTION_IMPLS:
      raise errors.ConfigError(f'Unknown attention_impl {self.attention_impl!r}; '
                       f'expected one of {ATTENTION_IMPLS}.')
    check_gelu(self.gelu)

  def embed(self, inputs, dtype):
    """(Hybrid root and) patch embedding: images to a grid of embeddings."""
    x = inputs.astype(dtype)
    if self.resnet is not None:
      x = models_resnet.resnet_root(x, self.resnet['num_layers'],
                                    self.resnet['width_factor'], dtype)
    return embed_patches(x, self.patches['size'], self.hidden_size, dtype,
                         image_shape=inputs.shape[1:3])

  @nn.compact
  def __call__(self, inputs, *, train, sow_weights: bool = False):
    self.setup_checks()
    dtype = jnp.dtype(self.dtype)
    x = self.embed(inputs, dtype)

    if self.transformer is not None:
      n, h, w, c = x.shape
      x = jnp.reshape(x, [n, h * w, c])
      if self.classifier in ('token', 'token_unpooled'):
        cls = self.param('cls', nn.initializers.zeros, (1, 1, c))
        x = jnp.concatenate([jnp.tile(cls.astype(dtype), [n, 1, 1]), x], 1)
      x = Encoder(name='Transformer', dtype=dtype, locality=self.locality,
                  attention_impl=self.attention_impl, remat=self.remat,
                  gelu=self.gelu, **self.transformer)(
                      x, train=train, grid_shape=(h, w),
                      sow_weights=sow_weights)

    return classifier_head(x, self.classifier, self.representation_size,
                           self.num_classes, self.head_bias_init)


def count_params(params) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))

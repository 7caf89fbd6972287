"""Vision Transformer (arXiv 2010.11929) in Flax, as in the official vit_jax.

Parameter names and shapes equal those of the released `.npz` checkpoints.
Optional extras, all off by default so the numerics equal the official model:
`locality` (depthwise 3x3 conv in the MLP, arXiv 2211.05187), a compute
`dtype`, `attention_impl` (jax.nn.dot_product_attention, e.g. cuDNN flash
attention; the default, `einsum_attention`, is flax's math with a backward
pass that XLA:CPU runs faster), `remat` per block, `gelu` ('tanh', the
official approximation, or 'exact', the erf form that timm and Hugging Face
models use), and position embeddings resized in-graph when the input grid
differs from the stored one (resolution curricula). For training from scratch
on small data: `transformer.stochastic_depth` (DeiT's drop-path, arXiv
2012.12877), `patch_embedding='spt'` and `transformer.attention='lsa'`
(Shifted Patch Tokenization and Locality Self-Attention, arXiv 2112.13492),
`posemb='sincos2d'` (fixed 2-D sin-cos position embeddings, as big_vision)
and `classifier='token_distill'` (DeiT's distillation token and head).
"""

import functools
import inspect
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

CLASSIFIERS = ('token', 'gap', 'unpooled', 'token_unpooled', 'token_distill')
# Tokens ahead of the patch grid: the class token `cls`, then DeiT's
# distillation token `dist`; other classifiers have none.
PREFIX_TOKENS = {'token': 1, 'token_unpooled': 1, 'token_distill': 2}
PREFIX_TOKEN_NAMES = ('cls', 'dist')
ATTENTION_IMPLS = (None, 'xla', 'cudnn', 'auto')
ATTENTIONS = ('mhsa', 'lsa')
PATCH_EMBEDDINGS = ('conv', 'spt')
POSEMBS = ('learned', 'sincos2d')


def num_prefix_tokens(classifier: str) -> int:
  """Tokens before the patch grid (class, distillation) for `classifier`."""
  return PREFIX_TOKENS.get(classifier, 0)


def check_choice(field: str, value, choices) -> None:
  """Raises a ConfigError naming `field` unless `value` is in `choices`."""
  if value not in choices:
    raise errors.ConfigError(
        f'Unknown {field}={value!r}; expected one of {choices}.')


def check_small_data_options(*, prefix: str, patch_embedding: str,
                             posemb: str, attention: str,
                             attention_impl: Optional[str],
                             stochastic_depth: float) -> None:
  """Raises a ConfigError on a bad value of the small-data options.

  `prefix` is where the fields live ('model.' or 'model.transformer.'), so
  the error names them as the config does.
  """
  check_choice('model.patch_embedding', patch_embedding, PATCH_EMBEDDINGS)
  check_choice('model.posemb', posemb, POSEMBS)
  check_choice(f'{prefix}attention', attention, ATTENTIONS)
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


DEPTHWISE_IMPLS = (None, 'slices', 'grouped')
# Bytes of grid per step of the loop that sums the slices' kernel gradient.
KERNEL_GRAD_CHUNK_BYTES = 2**20


def _conv_out_shape(grid_shape, strides: int) -> Tuple[int, int]:
  return tuple((n - 1) // strides + 1 for n in grid_shape)


def _tap_span(size: int, out_size: int, strides: int, offset: int):
  """Where kernel tap `offset` (0, 1, 2) of a padding-1 conv reads along one
  axis: (zero outputs before, zero outputs after, first input, input stop)."""
  first = 1 if offset == 0 else 0  # Output 0 of tap 0 reads the padding.
  last = min(out_size - 1, (size - offset) // strides)
  start = strides * first + offset - 1
  return (first, out_size - 1 - last, start,
          start + strides * (last - first) + 1)


def _per_output_channel(tap, weights):
  """tap (..., c) times weights (c * m,): output channel o reads input
  channel o // m, without materialising a repeated tap."""
  channels = tap.shape[-1]
  if weights.shape[-1] == channels:
    return tap * weights
  scaled = tap[..., None] * weights.reshape(channels, -1)
  return scaled.reshape(*tap.shape[:-1], weights.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def depthwise_conv_slices(grid, kernel, strides: int = 1):
  """3x3 depthwise conv (padding 1) as nine shifted, scaled slices.

  Args:
    grid: (batch, height, width, channels).
    kernel: (3, 3, 1, channels * multiplier), as `nn.Conv`'s with
      `feature_group_count=channels`.
    strides: the same stride along both axes.

  Returns:
    (batch, ceil(height / strides), ceil(width / strides), features).

  Each tap slices the grid where it reads it and pads its product to the
  output, rather than slicing a padded grid: XLA then keeps no padded copy
  of the grid for the backward pass. That pass is written out so that it
  only needs `grid` and `kernel` (differentiated by JAX, XLA materialises
  the nine taps in the forward pass and keeps them: nine grid-sized buffers
  per conv). Reverse mode only: `jax.jvp` does not apply to it.
  """
  batch, height, width, channels = grid.shape
  out_h, out_w = _conv_out_shape((height, width), strides)
  zero = jnp.zeros((), grid.dtype)
  out = 0
  for i in range(3):
    rows = _tap_span(height, out_h, strides, i)
    for j in range(3):
      cols = _tap_span(width, out_w, strides, j)
      tap = jax.lax.slice(grid, (0, rows[2], cols[2], 0),
                          (batch, rows[3], cols[3], channels),
                          (1, strides, strides, 1))
      out = out + jax.lax.pad(
          _per_output_channel(tap, kernel[i, j, 0]), zero,
          ((0, 0, 0), (rows[0], rows[1], 0), (cols[0], cols[1], 0),
           (0, 0, 0)))
  return out


def _depthwise_conv_slices_fwd(grid, kernel, strides):
  return depthwise_conv_slices(grid, kernel, strides), (grid, kernel)


def _depthwise_conv_slices_bwd(strides, residuals, d_out):
  grid, kernel = residuals
  batch, height, width, channels = grid.shape
  out_h, out_w = d_out.shape[1:3]
  multiplier = kernel.shape[-1] // channels
  # d_out spread back to the input positions it was read from (zeros between
  # them for strides > 1) and padded by one: tap (i, j) of it is what input
  # position (h, w) sent through kernel tap (2 - i, 2 - j). Both gradients
  # shift d_out, not the grid: taps of the grid would only depend on
  # forward values, and XLA then computes and keeps them during the forward.
  def spread_taps(d_out):
    spread = jax.lax.pad(d_out, jnp.zeros((), d_out.dtype), (
        (0, 0, 0),
        (1, height - strides * (out_h - 1), strides - 1),
        (1, width - strides * (out_w - 1), strides - 1),
        (0, 0, 0)))
    for i in range(3):
      for j in range(3):
        tap = spread[:, i:i + height, j:j + width]
        # Split only for multipliers > 1: XLA:CPU reduced taps with a
        # trailing size-1 axis about twice as slowly.
        if multiplier > 1:
          tap = tap.reshape(*tap.shape[:3], channels, multiplier)
        yield 2 - i, 2 - j, tap

  d_grid = 0
  for i, j, tap in spread_taps(d_out):
    weights = kernel[i, j, 0]
    if multiplier > 1:
      tap = jnp.sum(tap * weights.reshape(channels, multiplier), axis=-1)
    else:
      tap = tap * weights
    d_grid = d_grid + tap

  def kernel_grad(grid, d_out):
    reads = grid if multiplier == 1 else grid[..., None]
    # Sums of batch * grid terms: in float32 whatever the dtype.
    sums = {(i, j): jnp.sum(reads * tap, axis=(0, 1, 2), dtype=jnp.float32)
            for i, j, tap in spread_taps(d_out)}
    return jnp.stack([sums[i, j].reshape(-1)
                      for i in range(3) for j in range(3)])

  chunk = _kernel_grad_chunk(grid)
  if chunk == batch:
    d_kernel = kernel_grad(grid, d_out)
  else:
    def add_chunk(total, chunk_pair):
      return total + kernel_grad(*chunk_pair), None

    def split(x):
      return x.reshape(-1, chunk, *x.shape[1:])

    d_kernel, _ = jax.lax.scan(
        add_chunk, jnp.zeros((9, kernel.shape[-1]), jnp.float32),
        (split(grid), split(d_out)))
  return d_grid, d_kernel.reshape(kernel.shape).astype(kernel.dtype)


def _kernel_grad_chunk(grid) -> int:
  """Images per step of the loop that sums the kernel gradient.

  A chunk of about KERNEL_GRAD_CHUNK_BYTES stays in the CPU's cache while
  its nine taps are read (on a shared 2-core VM the backward pass took a
  quarter to a half less time than with the sums over the whole batch).
  The whole batch when there is more than one device: the loop would
  gather a sharded batch onto each of them.
  """
  batch = grid.shape[0]
  if jax.device_count() > 1:
    return batch
  image_bytes = grid[0].size * grid.dtype.itemsize
  chunk = min(batch, max(1, KERNEL_GRAD_CHUNK_BYTES // image_bytes))
  while batch % chunk:
    chunk -= 1
  return chunk


depthwise_conv_slices.defvjp(_depthwise_conv_slices_fwd,
                             _depthwise_conv_slices_bwd)


def depthwise_conv_grouped(grid, kernel, strides: int = 1):
  """`depthwise_conv_slices` as one grouped convolution (what `nn.Conv`
  with `feature_group_count=channels` runs): cuDNN or the TPU's conv."""
  return jax.lax.conv_general_dilated(
      grid, kernel, (strides, strides), ((1, 1), (1, 1)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=grid.shape[-1])


def default_depthwise_impl() -> str:
  """Slices on CPU, where XLA differentiates a grouped convolution about
  200x slower (a 256 x 4x4x64 -> 2x2x128 batch: 900 ms against 4 ms);
  the platform's grouped convolution elsewhere."""
  return 'slices' if jax.default_backend() == 'cpu' else 'grouped'


def posemb_sincos_2d(grid_shape: Tuple[int, int], width: int,
                     temperature: float = 10_000.) -> np.ndarray:
  """Fixed 2-D sin-cos position embeddings, (h * w, width) float32.

  As big_vision's `posemb_sincos_2d` (MoCo v3): row-major over the grid,
  features [sin(x w), cos(x w), sin(y w), cos(y w)] for x the column and y
  the row, with frequencies w_k = temperature ** (-k / (width / 4 - 1)).
  """
  if width % 4 or width < 8:
    raise errors.ConfigError(
        f"posemb='sincos2d' needs a width that is a multiple of 4 and at "
        f'least 8 (a sin and a cos per axis, two frequencies or more); got '
        f'{width}.')
  y, x = np.mgrid[:grid_shape[0], :grid_shape[1]]
  omega = np.arange(width // 4) / (width // 4 - 1)
  omega = 1.0 / temperature**omega
  y = np.einsum('m,d->md', y.ravel(), omega)
  x = np.einsum('m,d->md', x.ravel(), omega)
  return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)],
                        axis=1).astype(np.float32)


def add_sincos_posemb(inputs, grid_shape: GridShape):
  """Adds `posemb_sincos_2d` of the input's grid; prefix tokens get zeros."""
  if grid_shape is None:
    raise ValueError("posemb='sincos2d' needs the patch grid shape.")
  num_prefix = inputs.shape[1] - grid_shape[0] * grid_shape[1]
  posemb = posemb_sincos_2d(grid_shape, inputs.shape[-1])
  posemb = np.concatenate(
      [np.zeros((num_prefix, inputs.shape[-1]), np.float32), posemb])
  return inputs + jnp.asarray(posemb, inputs.dtype)[None]


class DepthwiseConv(nn.Module):
  """3x3 depthwise conv (padding 1) with a channel multiplier.

  The parameters and outputs of `nn.Conv(features, (3, 3), strides,
  padding=1, feature_group_count=channels)`, then `activation` if given:
  output channel o reads input channel o // (features / channels). `impl`
  picks the computation: 'slices' (`depthwise_conv_slices`), 'grouped'
  (`depthwise_conv_grouped`) or None, `default_depthwise_impl()` of the
  backend at trace time. The conv and activation are recomputed in the
  backward pass (`jax.checkpoint`), which then only keeps the input: a
  depthwise conv costs little to recompute and its output is as large.
  """

  features: int
  strides: int = 1
  dtype: Any = jnp.float32
  impl: Optional[str] = None
  activation: Optional[Callable[[Array], Array]] = None

  @nn.compact
  def __call__(self, grid):
    channels = grid.shape[-1]
    if self.features % channels:
      raise errors.ConfigError(
          f'A depthwise conv cannot map {channels} channels to '
          f'{self.features}: the output width must be a multiple of the '
          'input width.')
    if self.impl not in DEPTHWISE_IMPLS:
      raise errors.ConfigError(
          f'Unknown depthwise conv impl {self.impl!r}; expected one of '
          f'{DEPTHWISE_IMPLS}.')
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (3, 3, 1, self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    grid, kernel, bias = nn.dtypes.promote_dtype(grid, kernel, bias,
                                                 dtype=self.dtype)
    impl = self.impl or default_depthwise_impl()
    conv = (depthwise_conv_slices if impl == 'slices'
            else depthwise_conv_grouped)
    activation = self.activation or (lambda x: x)

    @jax.checkpoint
    def conv_bias_activation(grid, kernel, bias):
      return activation(conv(grid, kernel, self.strides) + bias)

    return conv_bias_activation(grid, kernel, bias)


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
                         activation=gelu_fn(self.gelu),
                         name='locality_conv')(grid)
    grid = grid.reshape(x.shape[0], -1, self.mlp_dim)
    return jnp.concatenate([prefix, grid], axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _heads_first_attention(query, key, value, multiplier, mask_diagonal):
  """softmax(q k^T) v on (batch, heads, tokens, depth) arrays, q pre-scaled;
  `multiplier` (or None) is the attention dropout's keep mask / keep_prob;
  `mask_diagonal` (static) gives each token zero weight on itself."""
  return _heads_first_attention_fwd(query, key, value, multiplier,
                                    mask_diagonal)[0]


def _heads_first_attention_fwd(query, key, value, multiplier, mask_diagonal):
  logits = jnp.einsum('bhqd,bhkd->bhqk', query, key)
  if mask_diagonal:
    # As flax masks: the dtype's most negative value, so the weight is 0.
    off_diagonal = ~jnp.eye(logits.shape[-2], logits.shape[-1], dtype=bool)
    logits = jnp.where(off_diagonal, logits, jnp.finfo(logits.dtype).min)
  weights = jax.nn.softmax(logits)
  weights = weights.astype(query.dtype)
  dropped = weights if multiplier is None else weights * multiplier
  out = jnp.einsum('bhqk,bhkd->bhqd', dropped, value)
  return out, (query, key, value, weights, multiplier)


def _heads_first_attention_bwd(mask_diagonal, residuals, d_out):
  # Written out because XLA:CPU, left to transpose the forward einsums
  # itself, picks a (depth, tokens) output layout for dK and dV whose
  # batched matmuls run at ~5 % of the CPU's matmul speed. A masked logit
  # has weight 0, so the softmax's backward below gives it no gradient, as
  # the mask's own derivative does: `mask_diagonal` needs nothing here.
  del mask_diagonal
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
                     deterministic=False, dtype=None, mask_diagonal=False):
  """The math of `nn.dot_product_attention` (same dropout mask for the same
  rng), as batched matmuls over (batch, heads) with a hand-written backward
  pass; the default attention (`attention_impl=None`). `mask_diagonal`
  masks each token's own key, as LSA does (in place of a `mask`)."""
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
  out = _heads_first_attention(query, key, value, multiplier,
                               bool(mask_diagonal))
  return jnp.swapaxes(out, -3, -2)


def fused_attention(query, key, value, mask=None, *, implementation,
                    dropout_rate=0.0, deterministic=True):
  """`jax.nn.dot_product_attention` (cuDNN flash attention on GPUs)."""
  if dropout_rate > 0.0 and not deterministic:
    raise errors.ConfigError(
        'attention_impl=%r has no attention dropout; set '
        'transformer.attention_dropout_rate=0 or attention_impl=None.'
        % implementation)
  return jax.nn.dot_product_attention(
      query, key, value, mask=mask,
      implementation=None if implementation == 'auto' else implementation)


def locality_attention(query, key, value, mask=None, dropout_rng=None,
                       dropout_rate=0.0, broadcast_dropout=True,
                       deterministic=False, dtype=None, module=None, *,
                       temperature, implementation):
  """Locality Self-Attention's attention (LSA, arXiv 2112.13492).

  Logits q.k / `temperature` (the paper's learned scalar per layer; the
  authors' code learns a multiplier per head) with the diagonal masked out
  before the softmax, so no token attends to itself. `implementation`:
  'flax' (`nn.dot_product_attention`, which sows the weights for `module`),
  None (`einsum_attention`), or 'xla' / 'auto' (`fused_attention`; cuDNN is
  refused by `check_small_data_options`). The arguments before `module` are
  those `nn.MultiHeadDotProductAttention` passes.
  """
  # Every wrapped function divides the query by sqrt(depth) itself.
  scale = math.sqrt(query.shape[-1]) / temperature
  query = query * scale.astype(query.dtype)
  if implementation is None:
    return einsum_attention(query, key, value, mask, dropout_rng,
                            dropout_rate, broadcast_dropout, deterministic,
                            dtype, mask_diagonal=True)
  # (batch, heads, queries, keys), broadcast.
  off_diagonal = ~jnp.eye(query.shape[-3], key.shape[-3], dtype=bool)
  off_diagonal = off_diagonal[None, None]
  mask = off_diagonal if mask is None else jnp.logical_and(mask, off_diagonal)
  if implementation == 'flax':
    return nn.dot_product_attention(
        query, key, value, mask=mask, dropout_rng=dropout_rng,
        dropout_rate=dropout_rate, broadcast_dropout=broadcast_dropout,
        deterministic=deterministic, dtype=dtype, module=module)
  return fused_attention(query, key, value, mask, implementation=implementation,
                         dropout_rate=dropout_rate,
                         deterministic=deterministic)


def drop_path(x, rate: float, rng):
  """Zeroes each example of `x` with probability `rate` and scales the kept
  ones by 1 / (1 - rate): stochastic depth of a residual branch."""
  keep_prob = 1.0 - rate
  keep = jax.random.bernoulli(rng, keep_prob,
                              (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(keep, x / jnp.asarray(keep_prob, x.dtype),
                   jnp.zeros_like(x))


def drop_path_rates(rate: float, num_blocks: int) -> Tuple[float, ...]:
  """DeiT's stochastic-depth schedule: 0 at the first block, rising linearly
  to `rate` at the last."""
  if num_blocks == 1:
    return (0.0,)
  return tuple(rate * (i / (num_blocks - 1)) for i in range(num_blocks))


class DropPath(nn.Module):
  """`drop_path` in training, from the 'dropout' rng stream."""

  rate: float

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or self.rate == 0.0:
      return x
    return drop_path(x, self.rate, self.make_rng('dropout'))


class MultiHeadSelfAttention(nn.Module):
  """`nn.MultiHeadDotProductAttention` for self-attention (the same params,
  initialisation, dropout rng and outputs to float rounding), with the
  query, key and value projections as one matmul of their kernels side by
  side: on CPUs one (tokens, width) x (width, 3 width) matmul, forward and
  backward, runs faster than three of (width, width). The kernels stay
  three params (`query`, `key`, `value`), as in the released checkpoints.
  `attention_fn` takes what `nn.MultiHeadDotProductAttention` passes
  (`module=self` when sowing the weights, so they land where flax's do).
  """

  num_heads: int
  dtype: Dtype = jnp.float32
  kernel_init: Callable = nn.initializers.xavier_uniform()
  dropout_rate: float = 0.0
  broadcast_dropout: bool = False
  attention_fn: Callable = nn.dot_product_attention

  @nn.compact
  def __call__(self, x, *, deterministic: bool, sow_weights: bool = False):
    width = x.shape[-1]
    if width % self.num_heads:
      raise errors.ConfigError(
          f'The width {width} is not a multiple of num_heads '
          f'{self.num_heads}; choose a width divisible by the heads.')
    heads = (self.num_heads, width // self.num_heads)
    names = ('query', 'key', 'value')
    if self.is_initializing():
      # Each kernel initialised as flax's DenseGeneral does (same rngs).
      query, key, value = (
          nn.DenseGeneral(features=heads, dtype=self.dtype,
                          kernel_init=self.kernel_init, name=name)(x)
          for name in names)
    else:
      params = self.variables['params']
      kernel = jnp.stack([params[name]['kernel'] for name in names], axis=1)
      bias = jnp.stack([params[name]['bias'] for name in names])
      x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias,
                                                dtype=self.dtype)
      with jax.named_scope('query_key_value'):  # For profiles' op names.
        qkv = jnp.einsum('...c,cshd->...shd', x, kernel) + bias
      query, key, value = (qkv[..., i, :, :] for i in range(3))
    dropout_rng = None
    if self.dropout_rate > 0.0 and not deterministic:
      dropout_rng = self.make_rng('dropout')
    kwargs = dict(dropout_rng=dropout_rng, dropout_rate=self.dropout_rate,
                  broadcast_dropout=self.broadcast_dropout,
                  deterministic=deterministic or self.dropout_rate == 0.0,
                  dtype=self.dtype)
    if sow_weights:
      kwargs['module'] = self
    # As flax does: pass only the arguments that `attention_fn` takes.
    accepted = inspect.signature(self.attention_fn).parameters
    out = self.attention_fn(query, key, value, **{
        name: arg for name, arg in kwargs.items() if name in accepted})
    return nn.DenseGeneral(features=width, axis=(-2, -1), dtype=self.dtype,
                           kernel_init=self.kernel_init, name='out')(out)


class Encoder1DBlock(nn.Module):
  """Pre-LayerNorm transformer block: x + MHSA(LN(x)), then x + MLP(LN(x)).

  `drop_path_rate`: stochastic depth, each residual branch of an example
  dropped with this probability in training. `attention='lsa'`: Locality
  Self-Attention, with the block's learned `lsa_temperature`.
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

  @nn.compact
  def __call__(self, inputs, deterministic: bool, grid_shape: GridShape = None,
               sow_weights: bool = False):
    # Positional arguments so that `nn.remat` can mark them static.
    if inputs.ndim != 3:
      raise ValueError(f'Expected (batch, seq, hidden), got {inputs.shape}.')
    check_choice('transformer.attention', self.attention, ATTENTIONS)
    if sow_weights:  # Needs flax's version, which sows the weights.
      attention_fn = nn.dot_product_attention
    elif self.attention_impl is None:
      attention_fn = einsum_attention
    else:
      attention_fn = functools.partial(fused_attention,
                                       implementation=self.attention_impl)
    if self.attention == 'lsa':
      attention_fn = self.locality_attention_fn(inputs, sow_weights)
    # Explicit names: they are those of the released checkpoints, which
    # current flax auto-naming (numbered per type) would not reproduce.
    x = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_0')(inputs)
    x = MultiHeadSelfAttention(
        num_heads=self.num_heads,
        dtype=self.dtype,
        dropout_rate=self.attention_dropout_rate,
        attention_fn=attention_fn,
        name='MultiHeadDotProductAttention_1')(
            x, deterministic=deterministic, sow_weights=sow_weights)
    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)
    x = DropPath(self.drop_path_rate)(x, deterministic)
    x = x + inputs

    y = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_2')(x)
    y = MlpBlock(mlp_dim=self.mlp_dim, dtype=self.dtype,
                 dropout_rate=self.dropout_rate, locality=self.locality,
                 gelu=self.gelu, name='MlpBlock_3')(
                     y, deterministic=deterministic, grid_shape=grid_shape)
    y = DropPath(self.drop_path_rate)(y, deterministic)
    return x + y

  def locality_attention_fn(self, inputs, sow_weights: bool):
    """`locality_attention` with this block's temperature parameter."""
    head_dim = inputs.shape[-1] // self.num_heads
    temperature = self.param('lsa_temperature',
                             nn.initializers.constant(math.sqrt(head_dim)), ())
    return functools.partial(
        locality_attention, temperature=temperature,
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
  `posemb` 'learned' (`posembed_input`) or 'sincos2d' (fixed, no params).
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

  @nn.compact
  def __call__(self, x, *, train, grid_shape: GridShape = None,
               sow_weights: bool = False):
    if x.ndim != 3:
      raise ValueError(f'Expected (batch, seq, hidden), got {x.shape}.')
    check_choice('model.posemb', self.posemb, POSEMBS)
    if self.add_position_embedding:
      if self.posemb == 'sincos2d':
        x = add_sincos_posemb(x, grid_shape)
      else:
        x = AddPositionEmbs(
            posemb_init=nn.initializers.normal(stddev=0.02),  # From BERT.
            name='posembed_input')(x, grid_shape)
      x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=not train)

    block_cls = encoder_block_class(self.remat)
    rates = drop_path_rates(self.stochastic_depth, self.num_layers)
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
          name=f'encoderblock_{lyr}')(x, not train, grid_shape, sow_weights)
    return nn.LayerNorm(dtype=self.dtype, name='encoder_norm')(x)


def diagonal_shifts(images, shift: Tuple[int, int]):
  """The images and four diagonal shifts of them, concatenated on channels.

  Pixel (i, j) of the copies holds images[i + di, j + dj], zero outside the
  image, for (di, dj) = (-s, -t), (-s, t), (s, -t), (s, t) where (s, t) =
  `shift`: in the SPT authors' code, the windows at the left-up, right-up,
  left-down and right-down corners of the zero-padded image. (b, h, w, c)
  in, (b, h, w, 5 c) out: the image's channels, then each copy's.
  """
  s, t = shift
  height, width = images.shape[1:3]
  padded = jnp.pad(images, ((0, 0), (s, s), (t, t), (0, 0)))
  copies = [padded[:, i:i + height, j:j + width]
            for i, j in ((0, 0), (0, 2 * t), (2 * s, 0), (2 * s, 2 * t))]
  return jnp.concatenate([images] + copies, axis=-1)


def space_to_depth(x, patch: Tuple[int, int]):
  """(b, h * p, w * q, c) to (b, h, w, p * q * c): each patch as a vector,
  in the (row, column, channel) order of a conv kernel."""
  b, height, width, c = x.shape
  p, q = patch
  x = x.reshape(b, height // p, p, width // q, q, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, height // p, width // q,
                                               p * q * c)


class ShiftedPatchTokenization(nn.Module):
  """Shifted Patch Tokenization (SPT, arXiv 2112.13492), as its authors'
  code: `diagonal_shifts` by half a patch, cut into patches, each patch
  vector LayerNorm'ed (`norm`) and mapped to the width (`proj`)."""

  hidden_size: int
  patch_size: Tuple[int, int]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    patch = tuple(self.patch_size)
    if min(patch) < 2:
      raise errors.ConfigError(
          f"patch_embedding='spt' shifts the image by half a patch, which "
          f'is no shift for patch size {patch}; use patches of 2 pixels or '
          "more per side (so not a hybrid's 1x1), or patch_embedding='conv'.")
    x = diagonal_shifts(x, (patch[0] // 2, patch[1] // 2))
    x = space_to_depth(x, patch)
    x = nn.LayerNorm(dtype=self.dtype, name='norm')(x)
    return nn.Dense(self.hidden_size, dtype=self.dtype, name='proj')(x)


def embed_patches(x, patch_size, hidden_size: int, dtype, image_shape,
                  patch_embedding: str = 'conv'):
  """(b, h, w, c) pixels to a grid of patch embeddings: the 'embedding'
  conv, or `ShiftedPatchTokenization` ('spt') for `patch_embedding='spt'`.

  Called inside a compact method; `image_shape` is only for the error.
  """
  patch = tuple(patch_size)
  if x.shape[1] % patch[0] or x.shape[2] % patch[1]:
    raise errors.ConfigError(
        f'Patch size {patch} does not divide the input grid '
        f'{x.shape[1:3]} (image {tuple(image_shape)}); use an image size '
        'that is a multiple of the patch size (times the ResNet root '
        'stride for hybrids).')
  if patch_embedding == 'spt':
    return ShiftedPatchTokenization(hidden_size, patch, dtype=dtype,
                                    name='spt')(x)
  return nn.Conv(features=hidden_size, kernel_size=patch, strides=patch,
                 padding='VALID', dtype=dtype, name='embedding')(x)


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


def check_distill_outputs(classifier: str, distill_outputs: bool) -> None:
  if distill_outputs and classifier != 'token_distill':
    raise errors.ConfigError(
        f'distill_outputs=True asks for the class and distillation logits, '
        f"but classifier={classifier!r} has no distillation token; use "
        "classifier='token_distill'.")


def classifier_head(x, classifier: str, representation_size: Optional[int],
                    num_classes: int, head_bias_init: float,
                    distill_outputs: bool = False):
  """Pools the encoder output, then 'pre_logits' and the 'head' layer.

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

  Every block has the same width (a "tower"); see `models_staged` for a ViT
  whose width changes between groups of blocks. `__call__` returns the
  logits; with `classifier='token_distill'` and `distill_outputs=True`, the
  pair (class-token logits, distillation-token logits).
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

  def setup_checks(self):
    if self.classifier not in CLASSIFIERS:
      raise errors.ConfigError(
          f'Unknown classifier {self.classifier!r}; expected one of '
          f'{CLASSIFIERS}.')
    if self.attention_impl not in ATTENTION_IMPLS:
      raise errors.ConfigError(
          f'Unknown attention_impl {self.attention_impl!r}; expected one of '
          f'{ATTENTION_IMPLS}.')
    transformer = self.transformer or {}
    check_small_data_options(
        prefix='model.transformer.', patch_embedding=self.patch_embedding,
        posemb=self.posemb, attention=transformer.get('attention', 'mhsa'),
        attention_impl=self.attention_impl,
        stochastic_depth=transformer.get('stochastic_depth', 0.0))
    if self.posemb == 'sincos2d':
      posemb_sincos_2d((1, 1), self.hidden_size)  # Checks the width.
    check_gelu(self.gelu)

  def embed(self, inputs, dtype):
    """(Hybrid root and) patch embedding: images to a grid of embeddings."""
    x = inputs.astype(dtype)
    if self.resnet is not None:
      x = models_resnet.resnet_root(x, self.resnet['num_layers'],
                                    self.resnet['width_factor'], dtype)
    return embed_patches(x, self.patches['size'], self.hidden_size, dtype,
                         image_shape=inputs.shape[1:3],
                         patch_embedding=self.patch_embedding)

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
                  posemb=self.posemb, gelu=self.gelu, **self.transformer)(
                      x, train=train, grid_shape=(h, w),
                      sow_weights=sow_weights)

    return classifier_head(x, self.classifier, self.representation_size,
                           self.num_classes, self.head_bias_init,
                           distill_outputs)

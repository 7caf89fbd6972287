"""3x3 depthwise convolution: nine shifted slices with a hand-written backward
pass (fast on CPUs), or the platform's grouped convolution.
"""

import functools
from typing import Any, Callable, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_flax import errors

Array = Any



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

"""Position embeddings: learned (resized in-graph to other grids) and fixed
2-D sin-cos; the split of a token sequence into prefix tokens and a grid.
"""

import math
from typing import Any, Callable, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vit_flax import errors

GridShape = Optional[Tuple[int, int]]
Array = Any

POSEMBS = ('learned', 'sincos2d')


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

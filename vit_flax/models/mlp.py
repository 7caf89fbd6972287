"""The transformer's MLP block (with optional locality) and its GELU flavours.
"""

import functools
from typing import Any, Callable, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from vit_flax import errors
from vit_flax.models import depthwise_conv as depthwise_conv_lib
from vit_flax.models import posemb

GridShape = Optional[Tuple[int, int]]
Dtype = Any
Array = Any

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
    prefix, grid = posemb.split_prefix(x, grid_shape)
    grid = depthwise_conv_lib.DepthwiseConv(self.mlp_dim,
                                            dtype=self.dtype,
                                            activation=gelu_fn(self.gelu),
                                            name='locality_conv')(grid)
    grid = grid.reshape(x.shape[0], -1, self.mlp_dim)
    return jnp.concatenate([prefix, grid], axis=1)

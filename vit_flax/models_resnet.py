"""ResNet pieces in the BiT style: weight-standardised convs and GroupNorm.

Used as the root of hybrid ViTs (R50+ViT-B_16); names match the official
hybrid checkpoints (`conv_root`, `gn_root`, `block{i}/unit{j}/conv1`, ...).
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


def weight_standardize(kernel, axis, eps):
  """Zero-mean, unit-variance kernel per output channel (BiT)."""
  kernel = kernel - jnp.mean(kernel, axis=axis, keepdims=True)
  return kernel / (jnp.std(kernel, axis=axis, keepdims=True) + eps)


class StdConv(nn.Conv):
  """A convolution whose kernel is standardised before every use."""

  def param(self, name, *args, **kwargs):
    value = super().param(name, *args, **kwargs)
    if name == 'kernel':
      value = weight_standardize(value, axis=(0, 1, 2), eps=1e-5)
    return value


class ResidualUnit(nn.Module):
  """Bottleneck unit: 1x1 -> 3x3 (strided) -> 1x1 with 4x expansion."""

  features: int
  strides: Sequence[int] = (1, 1)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    out_features = self.features * 4
    residual = x
    if x.shape[-1] != out_features or tuple(self.strides) != (1, 1):
      residual = StdConv(out_features, (1, 1), self.strides, use_bias=False,
                         dtype=self.dtype, name='conv_proj')(residual)
      residual = nn.GroupNorm(dtype=self.dtype, name='gn_proj')(residual)

    y = StdConv(self.features, (1, 1), use_bias=False, dtype=self.dtype,
                name='conv1')(x)
    y = nn.relu(nn.GroupNorm(dtype=self.dtype, name='gn1')(y))
    y = StdConv(self.features, (3, 3), self.strides, use_bias=False,
                dtype=self.dtype, name='conv2')(y)
    y = nn.relu(nn.GroupNorm(dtype=self.dtype, name='gn2')(y))
    y = StdConv(out_features, (1, 1), use_bias=False, dtype=self.dtype,
                name='conv3')(y)
    # Zero-initialised last scale: each unit starts as the identity.
    y = nn.GroupNorm(dtype=self.dtype, scale_init=nn.initializers.zeros,
                     name='gn3')(y)
    return nn.relu(residual + y)


class ResNetStage(nn.Module):
  """`block_size` bottleneck units; only the first one may stride."""

  block_size: int
  nout: int
  first_stride: Sequence[int]
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = ResidualUnit(self.nout, strides=self.first_stride, dtype=self.dtype,
                     name='unit1')(x)
    for i in range(1, self.block_size):
      x = ResidualUnit(self.nout, dtype=self.dtype, name=f'unit{i + 1}')(x)
    return x


def resnet_root(x, num_layers, width_factor, dtype=jnp.float32):
  """Stem (7x7/2 conv, GN, ReLU, 3x3/2 max-pool) then bottleneck stages.

  Call it from inside a compact method: its layers become children of the
  calling module, so their names sit at the top level as in official hybrid
  checkpoints (`conv_root`, `gn_root`, `block1`, ...).
  """
  width = int(64 * width_factor)
  x = StdConv(width, (7, 7), (2, 2), use_bias=False, dtype=dtype,
              name='conv_root')(x)
  x = nn.relu(nn.GroupNorm(dtype=dtype, name='gn_root')(x))
  x = nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding='SAME')
  for i, block_size in enumerate(num_layers):
    x = ResNetStage(block_size=block_size, nout=width * 2**i,
                    first_stride=(1, 1) if i == 0 else (2, 2), dtype=dtype,
                    name=f'block{i + 1}')(x)
  return x

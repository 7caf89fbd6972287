"""ResNets in the BiT style: weight-standardised convs and GroupNorm.

The pieces are the root of hybrid ViTs (R50+ViT-B_16), with the names of the
official hybrid checkpoints (`conv_root`, `gn_root`, `block{i}/unit{j}/conv1`,
...). `ResNet` is the same network as a classifier (ResNet-18/26/50 baselines),
with those names plus a `head`. A hybrid's `model.resnet` takes the same
choices as `ResNet` (`HYBRID_ROOT_DEFAULTS`), so a small root of convolution
stages before the transformer blocks (CoAtNet's C-C-T) is one config.
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from vit_flax import errors

# conv_root variants: 7x7/2 conv and 3x3/2 max-pool (ImageNet), or one 3x3/1
# conv (CIFAR-style, for 28-32 px images that /4 would shrink too much).
STEMS = ('imagenet', 'cifar')
# GroupNorm groups (nn.GroupNorm's default, as in BiT); widths must be
# multiples of it.
GN_GROUPS = 32
# The fields of a hybrid ViT's `model.resnet` besides `num_layers`, with the
# values of the official hybrids (R50+ViT-B_16, ...) as defaults.
HYBRID_ROOT_DEFAULTS = {'width_factor': 1.0, 'stem': 'imagenet',
                        'bottleneck': True, 'norm_groups': GN_GROUPS}


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


def shortcut(x, out_features, strides, dtype, groups=GN_GROUPS):
  """Identity, or a strided 1x1 conv and GN where the shape changes.

  Call it from inside a compact method: `conv_proj` and `gn_proj` become
  children of the calling unit.
  """
  if x.shape[-1] == out_features and tuple(strides) == (1, 1):
    return x
  x = StdConv(out_features, (1, 1), strides, use_bias=False, dtype=dtype,
              name='conv_proj')(x)
  return nn.GroupNorm(groups, dtype=dtype, name='gn_proj')(x)


class ResidualUnit(nn.Module):
  """Bottleneck unit: 1x1 -> 3x3 (strided) -> 1x1 with 4x expansion."""

  features: int
  strides: Sequence[int] = (1, 1)
  dtype: jnp.dtype = jnp.float32
  norm_groups: int = GN_GROUPS

  @nn.compact
  def __call__(self, x):
    out_features = self.features * 4
    residual = shortcut(x, out_features, self.strides, self.dtype,
                        self.norm_groups)

    y = StdConv(self.features, (1, 1), use_bias=False, dtype=self.dtype,
                name='conv1')(x)
    y = nn.relu(nn.GroupNorm(self.norm_groups, dtype=self.dtype,
                             name='gn1')(y))
    y = StdConv(self.features, (3, 3), self.strides, use_bias=False,
                dtype=self.dtype, name='conv2')(y)
    y = nn.relu(nn.GroupNorm(self.norm_groups, dtype=self.dtype,
                             name='gn2')(y))
    y = StdConv(out_features, (1, 1), use_bias=False, dtype=self.dtype,
                name='conv3')(y)
    # Zero-initialised last scale: each unit starts as the identity.
    y = nn.GroupNorm(self.norm_groups, dtype=self.dtype,
                     scale_init=nn.initializers.zeros,
                     name='gn3')(y)
    return nn.relu(residual + y)


class BasicUnit(nn.Module):
  """Basic unit of ResNet-18/34: two 3x3 convs, no expansion."""

  features: int
  strides: Sequence[int] = (1, 1)
  dtype: jnp.dtype = jnp.float32
  norm_groups: int = GN_GROUPS

  @nn.compact
  def __call__(self, x):
    residual = shortcut(x, self.features, self.strides, self.dtype,
                        self.norm_groups)

    y = StdConv(self.features, (3, 3), self.strides, use_bias=False,
                dtype=self.dtype, name='conv1')(x)
    y = nn.relu(nn.GroupNorm(self.norm_groups, dtype=self.dtype,
                             name='gn1')(y))
    y = StdConv(self.features, (3, 3), use_bias=False, dtype=self.dtype,
                name='conv2')(y)
    # Zero-initialised last scale, as in the bottleneck unit.
    y = nn.GroupNorm(self.norm_groups, dtype=self.dtype,
                     scale_init=nn.initializers.zeros,
                     name='gn2')(y)
    return nn.relu(residual + y)


class ResNetStage(nn.Module):
  """`block_size` units (bottleneck or basic); only the first may stride."""

  block_size: int
  nout: int
  first_stride: Sequence[int]
  dtype: jnp.dtype = jnp.float32
  bottleneck: bool = True
  norm_groups: int = GN_GROUPS

  @nn.compact
  def __call__(self, x):
    unit = ResidualUnit if self.bottleneck else BasicUnit
    x = unit(self.nout, strides=self.first_stride, dtype=self.dtype,
             norm_groups=self.norm_groups, name='unit1')(x)
    for i in range(1, self.block_size):
      x = unit(self.nout, dtype=self.dtype, norm_groups=self.norm_groups,
               name=f'unit{i + 1}')(x)
    return x


def resnet_root(x, num_layers, width_factor, dtype=jnp.float32,
                bottleneck=True, stem='imagenet', norm_groups=GN_GROUPS):
  """Stem (7x7/2 conv, GN, ReLU, 3x3/2 max-pool) then the stages.

  Call it from inside a compact method: its layers become children of the
  calling module, so their names sit at the top level as in official hybrid
  checkpoints (`conv_root`, `gn_root`, `block1`, ...). `stem='cifar'` makes
  the stem one 3x3/1 conv (with GN and ReLU) and drops the max-pool.
  """
  width = int(64 * width_factor)
  if stem == 'imagenet':
    x = StdConv(width, (7, 7), (2, 2), use_bias=False, dtype=dtype,
                name='conv_root')(x)
  else:
    x = StdConv(width, (3, 3), use_bias=False, dtype=dtype,
                name='conv_root')(x)
  x = nn.relu(nn.GroupNorm(norm_groups, dtype=dtype, name='gn_root')(x))
  if stem == 'imagenet':
    x = nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding='SAME')
  for i, block_size in enumerate(num_layers):
    x = ResNetStage(block_size=block_size, nout=width * 2**i,
                    first_stride=(1, 1) if i == 0 else (2, 2), dtype=dtype,
                    bottleneck=bottleneck, norm_groups=norm_groups,
                    name=f'block{i + 1}')(x)
  return x


def check_root(num_layers, width_factor, stem, norm_groups,
               prefix: str = 'ResNet ') -> None:
  """Raises a ConfigError unless `resnet_root` can build these settings;
  `prefix` names the fields ('ResNet ' or 'model.resnet.')."""
  if stem not in STEMS:
    raise errors.ConfigError(
        f'Unknown {prefix}stem {stem!r}; expected one of {STEMS}.')
  if not num_layers or min(num_layers) < 1:
    raise errors.ConfigError(
        f'{prefix}num_layers={tuple(num_layers or ())} must list at least '
        'one stage, each with at least one unit, e.g. (2, 2, 2, 2).')
  if isinstance(width_factor, bool) or not isinstance(width_factor,
                                                      (int, float)):
    raise errors.ConfigError(
        f'{prefix}width_factor={width_factor!r} must be a number (the root '
        'width is 64 * width_factor, e.g. 0.25 for 16 channels).')
  width = int(64 * width_factor)
  groups = norm_groups
  if groups < 1 or width < groups or width % groups:
    raise errors.ConfigError(
        f'{prefix}width_factor={width_factor} gives a root width of '
        f'{width}, which GroupNorm cannot split into norm_groups={groups} '
        'groups; use a width_factor that makes 64 * width_factor a '
        f'multiple of {groups} (e.g. {groups / 64:g}, {2 * groups / 64:g}), '
        'or fewer norm_groups.')


def hybrid_root_settings(resnet) -> dict:
  """The keyword arguments of `resnet_root` for a hybrid's `model.resnet`
  (`num_layers` and the `HYBRID_ROOT_DEFAULTS` it overrides), checked."""
  fields = dict(resnet)
  unknown = sorted(set(fields) - {'num_layers'} - set(HYBRID_ROOT_DEFAULTS))
  if unknown or 'num_layers' not in fields:
    raise errors.ConfigError(
        f'model.resnet has the fields {sorted(fields)}; a hybrid root takes '
        f"'num_layers' (units per stage) and any of "
        f'{sorted(HYBRID_ROOT_DEFAULTS)} (defaults {HYBRID_ROOT_DEFAULTS}).')
  settings = dict(HYBRID_ROOT_DEFAULTS, **fields)
  settings['num_layers'] = tuple(settings['num_layers'])
  check_root(settings['num_layers'], settings['width_factor'],
             settings['stem'], settings['norm_groups'], 'model.resnet.')
  return settings


def root_stride(num_layers, stem: str = 'imagenet') -> int:
  """Pixels per feature-map position after `resnet_root`: the stem's 4
  ('imagenet') or 1 ('cifar'), then 2 per stage after the first."""
  return (4 if stem == 'imagenet' else 1) * 2**(len(num_layers) - 1)


class ResNet(nn.Module):
  """A BiT-style ResNet classifier; `ResNet(num_classes=n, **config.model)`.

  Post-activation units as in the hybrid root (each ends with a GN whose
  scale starts at zero), global average pooling and a zero-initialised
  `head`. `num_layers` gives the units per stage, e.g. (2, 2, 2, 2) with
  `bottleneck=False` for ResNet-18, (3, 4, 6, 3) for ResNet-50.
  """

  num_classes: int
  num_layers: Sequence[int]
  bottleneck: bool = True
  width_factor: float = 1.0
  stem: str = 'imagenet'
  model_name: Optional[str] = None
  dtype: Any = 'float32'
  # GroupNorm groups; BiT's 32 needs widths of 32 and more (width_factor
  # 0.5); fewer groups allow the narrower nets that small data and a CPU
  # afford.
  norm_groups: int = GN_GROUPS

  def check_config(self):
    check_root(self.num_layers, self.width_factor, self.stem,
               self.norm_groups)

  @nn.compact
  def __call__(self, inputs, *, train):
    del train  # No dropout, and GroupNorm keeps no batch statistics.
    self.check_config()
    dtype = jnp.dtype(self.dtype)
    x = resnet_root(inputs.astype(dtype), self.num_layers, self.width_factor,
                    dtype, bottleneck=self.bottleneck, stem=self.stem,
                    norm_groups=self.norm_groups)
    # The logits are computed in float32 whatever the compute dtype.
    x = jnp.mean(x, axis=(1, 2)).astype(jnp.float32)
    if self.num_classes:
      x = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros,
                   name='head')(x)
    return x

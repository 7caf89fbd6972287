"""Patch embeddings: the official patchify conv, Shifted Patch Tokenization
(SPT, arXiv 2112.13492) and two convolutional tokenizers.

The tokenizers replace the patchify conv by a few small convolutions, the
convolutional bias that small data does not teach a ViT:

- 'cct': CCT's tokenizer (arXiv 2104.05704, SHI-Labs' Compact-Transformers):
  `layers` x [k x k conv without bias, ReLU, 3x3/2 max-pool (pad 1)], the
  convs' stride and padding from the kernel as CCT's presets (k=3: stride 1,
  pad 1; k=7: stride 2, pad 3), `width` channels between the convs (CCT: 64)
  and the model's width out of the last.
- 'conv_stem': the early-convolution stem of arXiv 2106.14881 ("Early
  Convolutions Help Transformers See Better"): `layers` stride-2 3x3 convs,
  each with a norm and ReLU, channels doubling from `width`, then a 1x1 conv
  (`proj`) to the model's width. The paper normalises with BatchNorm; here
  it is GroupNorm of `norm_groups` groups, which keeps no batch statistics:
  the train step, checkpoints, gradient accumulation and sharded batches
  need no extra state, and training and evaluation compute the same
  function (GN tracks BN on small batches, Wu & He, arXiv 1803.08494).

They read `model.tokenizer` (fields and defaults in `TOKENIZER_DEFAULTS`),
not `model.patches`; the grid they give follows from the conv arithmetic
(`token_grid`), and position embeddings are sized to it.
"""

import math
from typing import Any, Dict, List, Mapping, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from vit_flax import errors

Dtype = Any
GridShape = Tuple[int, int]

# The patch embeddings that cut the image into `model.patches`.
PATCHIFIERS = ('conv', 'spt')
# The conv tokenizers: they read `model.tokenizer` (not `model.patches`).
TOKENIZERS = ('cct', 'conv_stem')
PATCH_EMBEDDINGS = PATCHIFIERS + TOKENIZERS
# The fields of `model.tokenizer` and their defaults, per tokenizer.
TOKENIZER_DEFAULTS = {
    # CCT-x/3x2's tokenizer.
    'cct': {'layers': 2, 'kernel': 3, 'width': 64},
    # Two stride-2 convs: a 28 px image gives a 7x7 grid.
    'conv_stem': {'layers': 2, 'width': 32, 'norm_groups': 8},
}
# Every field of either; a config holds them all, None where unset.
TOKENIZER_FIELDS = ('layers', 'kernel', 'width', 'norm_groups')
# The top-level module of each patch embedding (figures look for these).
MODULE_NAMES = {'conv': 'embedding', 'spt': 'spt', 'cct': 'tokenizer',
                'conv_stem': 'conv_stem'}
# Kaiming-normal (not truncated), the init of CCT's tokenizer convs; also
# the stem's ReLU convs.
RELU_CONV_INIT = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


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


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def tokenizer_settings(patch_embedding: str,
                       tokenizer: Optional[Mapping[str, Any]]
                       ) -> Dict[str, Any]:
  """The fields of a conv tokenizer: `TOKENIZER_DEFAULTS` updated by the
  fields of `model.tokenizer` that are not None (None: all defaults),
  checked; {} for 'conv' and 'spt', which do not read `model.tokenizer`.

  Raises:
    ConfigError: an unknown field, or a value the tokenizer cannot build.
  """
  if patch_embedding not in TOKENIZERS:
    return {}
  defaults = TOKENIZER_DEFAULTS[patch_embedding]
  # A dict, FrozenDict or ConfigDict (which is no Mapping).
  if tokenizer is not None and not hasattr(tokenizer, 'keys'):
    raise errors.ConfigError(
        f'model.tokenizer={tokenizer!r} must be a dict of the fields of the '
        f"{patch_embedding!r} tokenizer, {sorted(defaults)}, or None (the "
        f'defaults, {defaults}).')
  tokenizer = {field: value for field, value in dict(tokenizer or {}).items()
               if value is not None}
  unknown = sorted(set(tokenizer) - set(defaults))
  if unknown:
    raise errors.ConfigError(
        f'model.tokenizer has the fields {unknown}, which the '
        f"patch_embedding={patch_embedding!r} tokenizer does not have; its "
        f'fields are {sorted(defaults)} (defaults {defaults}).')
  settings = dict(defaults, **tokenizer)
  for field in ('layers', 'width', 'norm_groups'):
    if field in settings and not (_is_int(settings[field]) and
                                  settings[field] >= 1):
      meaning = {'layers': 'the number of conv layers',
                 'width': 'channels of the convs before the last one'
                          if patch_embedding == 'cct' else
                          'channels of the first conv (doubling after)',
                 'norm_groups': 'GroupNorm groups'}[field]
      raise errors.ConfigError(
          f'model.tokenizer.{field}={settings[field]!r} must be an integer '
          f'>= 1 ({meaning}).')
  if patch_embedding == 'cct':
    kernel = settings['kernel']
    if not (_is_int(kernel) and kernel >= 3 and kernel % 2):
      raise errors.ConfigError(
          f'model.tokenizer.kernel={kernel!r} must be an odd integer >= 3 '
          '(CCT uses 3 and 7): its stride and padding follow from it, and '
          'even kernels would grow the image by one pixel a layer.')
  else:
    width, groups = settings['width'], settings['norm_groups']
    if width % groups:
      raise errors.ConfigError(
          f'model.tokenizer.width={width} cannot be split into '
          f'model.tokenizer.norm_groups={groups} GroupNorm groups; use a '
          f'width that is a multiple of {groups} (e.g. '
          f'{max(1, round(width / groups)) * groups}) or fewer groups.')
  return settings


def cct_conv_geometry(kernel: int) -> Tuple[int, int]:
  """(stride, padding) of a CCT tokenizer conv of `kernel` x `kernel`, as
  CCT's presets: k=3 -> (1, 1), k=7 -> (2, 3)."""
  return max(1, kernel // 2 - 1), max(1, kernel // 2)


def tokenizer_windows(patch_embedding: str,
                      settings: Mapping[str, Any]) -> List[Tuple[int, int,
                                                                 int]]:
  """(kernel, stride, padding) of each spatial op of a conv tokenizer, in
  order: conv and max-pool per CCT layer; one strided conv per stem layer
  (the stem's last 1x1 conv keeps the grid)."""
  if patch_embedding == 'cct':
    conv = (settings['kernel'],) + cct_conv_geometry(settings['kernel'])
    return [conv, (3, 2, 1)] * settings['layers']
  return [(3, 2, 1)] * settings['layers']


def _window_output(size: int, window: Tuple[int, int, int]) -> int:
  kernel, stride, padding = window
  return (size + 2 * padding - kernel) // stride + 1


def token_grid(image_shape: Tuple[int, int], patch_embedding: str = 'conv',
               patch_size: Optional[Tuple[int, int]] = None,
               tokenizer: Optional[Mapping[str, Any]] = None) -> GridShape:
  """The (height, width) token grid that a patch embedding makes of an image
  of `image_shape` (after a hybrid's ResNet root: of its feature map)."""
  if patch_embedding not in TOKENIZERS:
    return (image_shape[0] // patch_size[0], image_shape[1] // patch_size[1])
  settings = tokenizer_settings(patch_embedding, tokenizer)
  grid = tuple(image_shape)
  for window in tokenizer_windows(patch_embedding, settings):
    grid = tuple(_window_output(side, window) for side in grid)
  return grid


def token_stride(patch_embedding: str,
                 tokenizer: Optional[Mapping[str, Any]] = None,
                 patch_size: Optional[Tuple[int, int]] = None) -> int:
  """Pixels per token along a side: the patch size, or the product of the
  tokenizer's strides (CCT-x/3x2: 4; CCT-x/7x2: 16; a 2-layer stem: 4)."""
  if patch_embedding not in TOKENIZERS:
    return patch_size[0]
  settings = tokenizer_settings(patch_embedding, tokenizer)
  return math.prod(stride for _, stride, _ in
                   tokenizer_windows(patch_embedding, settings))


def check_token_grid(image_shape: Tuple[int, int], patch_embedding: str,
                     settings: Mapping[str, Any]) -> None:
  """Raises a ConfigError when the tokenizer's stride exceeds the image:
  its layers would shrink the image below one token."""
  stride = token_stride(patch_embedding, settings)
  side = min(image_shape)
  if stride <= side:
    return
  fits = 0
  while token_stride(patch_embedding, dict(settings, layers=fits + 1)) <= side:
    fits += 1
  raise errors.ConfigError(
      f'model.tokenizer.layers={settings["layers"]} would shrink the '
      f'{tuple(image_shape)} input below one token: the '
      f'{patch_embedding!r} tokenizer strides {stride} pixels per token. '
      + (f'Use at most {fits} layers for this image size, or larger images.'
         if fits else 'Even one layer strides more than the image; use '
         'larger images or a smaller kernel.'))


class ConvTokenizer(nn.Module):
  """CCT's tokenizer: `layers` x [conv (no bias), ReLU, 3x3/2 max-pool].

  Every conv but the last has `width` channels, the last `hidden_size`;
  stride and symmetric padding from the kernel (`cct_conv_geometry`;
  explicit, as 'SAME' would pad a 7x7/2 conv of 224 px by (2, 3) where
  CCT pads (3, 3)). Params `conv_{i}/kernel`, Kaiming-normal as CCT's.
  """

  hidden_size: int
  layers: int = 2
  kernel: int = 3
  width: int = 64
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    stride, padding = cct_conv_geometry(self.kernel)
    for i in range(self.layers):
      x = nn.Conv(self.hidden_size if i == self.layers - 1 else self.width,
                  (self.kernel, self.kernel), strides=(stride, stride),
                  padding=((padding, padding), (padding, padding)),
                  use_bias=False, kernel_init=RELU_CONV_INIT,
                  dtype=self.dtype, name=f'conv_{i}')(x)
      # Padded with -inf, as torch's MaxPool2d(3, 2, padding=1).
      x = nn.max_pool(nn.relu(x), (3, 3), strides=(2, 2),
                      padding=((1, 1), (1, 1)))
    return x


class ConvStem(nn.Module):
  """The early-convolution stem of arXiv 2106.14881: `layers` x [3x3/2 conv
  (no bias), GroupNorm, ReLU] with `width`, 2 `width`, ... channels, then a
  1x1 conv (`proj`, with bias) to `hidden_size`. Params `conv_{i}`,
  `gn_{i}` and `proj`."""

  hidden_size: int
  layers: int = 2
  width: int = 32
  norm_groups: int = 8
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i in range(self.layers):
      x = nn.Conv(self.width * 2**i, (3, 3), strides=(2, 2),
                  padding=((1, 1), (1, 1)), use_bias=False,
                  kernel_init=RELU_CONV_INIT, dtype=self.dtype,
                  name=f'conv_{i}')(x)
      x = nn.relu(nn.GroupNorm(self.norm_groups, dtype=self.dtype,
                               name=f'gn_{i}')(x))
    return nn.Conv(self.hidden_size, (1, 1), dtype=self.dtype,
                   name='proj')(x)


def embed_patches(x, patch_size, hidden_size: int, dtype, image_shape,
                  patch_embedding: str = 'conv',
                  tokenizer: Optional[Mapping[str, Any]] = None):
  """(b, h, w, c) pixels to a grid of patch embeddings: the 'embedding'
  conv, `ShiftedPatchTokenization` ('spt'), or a conv tokenizer ('cct':
  `ConvTokenizer` named 'tokenizer'; 'conv_stem': `ConvStem`), which read
  `tokenizer` and not `patch_size`.

  Called inside a compact method; `image_shape` is only for the error.
  """
  if patch_embedding in TOKENIZERS:
    settings = tokenizer_settings(patch_embedding, tokenizer)
    check_token_grid(x.shape[1:3], patch_embedding, settings)
    module = ConvTokenizer if patch_embedding == 'cct' else ConvStem
    return module(hidden_size, **settings, dtype=dtype,
                  name=MODULE_NAMES[patch_embedding])(x)
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

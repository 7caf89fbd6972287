"""Patch embeddings: the official patchify conv and Shifted Patch Tokenization
(SPT, arXiv 2112.13492).
"""

from typing import Any, Tuple

import flax.linen as nn
import jax.numpy as jnp

from vit_flax import errors

Dtype = Any

PATCH_EMBEDDINGS = ('conv', 'spt')


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

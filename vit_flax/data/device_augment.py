"""The host pipeline's per-example preprocessing in jnp, for the train step.

With `config.data_on_device` the uint8 images are on the devices and each
batch is preprocessed inside the jitted step: grayscale -> RGB, uint8 ->
float in [-1, 1], a resize to the curriculum's size, then the augmentations
of `pp.augment` ('inception_crop_flip', 'pad_crop_flip', 'pad_crop', 'flip',
'none') and random erasing (`pp.random_erase`), each drawn per example as
`data/pipeline.py` draws them (the same distributions, not the same draws).
Mixup / CutMix follow in the step (`data/mixup.py`).
"""

import math
from typing import Optional

import jax
import jax.numpy as jnp


# Inception crops as the host pipeline samples them
# (tf.image.sample_distorted_bounding_box): a share of the area, an aspect
# ratio (width / height), and tries before the whole image is taken.
INCEPTION_AREA = (0.05, 1.0)
INCEPTION_ASPECT_RATIO = (3 / 4, 4 / 3)
INCEPTION_ATTEMPTS = 100


def to_rgb_float(images: jax.Array, size: Optional[int]) -> jax.Array:
  """uint8 (b, h, w, 1 or 3) -> float32 (b, size, size, 3) in [-1, 1].

  Resized bilinearly without antialiasing, as tf.image.resize does; not
  resized when `size` is None.
  """
  images = images.astype(jnp.float32)
  if images.shape[-1] == 1:
    images = jnp.broadcast_to(images, images.shape[:-1] + (3,))
  if size is not None and images.shape[1:3] != (size, size):
    images = jax.image.resize(images, (images.shape[0], size, size, 3),
                              'bilinear', antialias=False)
  return images / 127.5 - 1.0


def inception_crop_boxes(rng: jax.Array, batch: int, height: int,
                         width: int) -> jax.Array:
  """(batch, 4) int32 boxes (top, left, box height, box width) as TF's
  sample_distorted_bounding_box draws them for the host's
  'inception_crop_flip': per try an aspect ratio uniform in
  INCEPTION_ASPECT_RATIO, a height uniform between those of the smallest
  and largest area of INCEPTION_AREA (the width rounded from it), then an
  offset; the first of INCEPTION_ATTEMPTS tries that fits, else the whole
  image."""
  ratio_key, height_key, top_key, left_key = jax.random.split(rng, 4)
  shape = (batch, INCEPTION_ATTEMPTS)
  ratio = jax.random.uniform(ratio_key, shape, jnp.float32,
                             *INCEPTION_ASPECT_RATIO)
  min_area = INCEPTION_AREA[0] * height * width
  max_area = INCEPTION_AREA[1] * height * width
  box_h = jnp.round(jnp.sqrt(min_area / ratio))
  max_h = jnp.round(jnp.sqrt(max_area / ratio))
  # The largest height whose rounded width still fits.
  fitting = jnp.floor((width + 0.5 - 1e-7) / ratio)
  fitting = jnp.where(jnp.round(fitting * ratio) > width, fitting - 1,
                      fitting)
  max_h = jnp.where(jnp.round(max_h * ratio) > width, fitting, max_h)
  max_h = jnp.minimum(max_h, height)
  box_h = jnp.minimum(box_h, max_h)
  box_h += jnp.floor(jax.random.uniform(height_key, shape) *
                     (max_h - box_h + 1))
  box_w = jnp.round(box_h * ratio)
  # Rounding may leave the area just outside the range: one step each way.
  grow = box_w * box_h < min_area
  box_h = jnp.where(grow, box_h + 1, box_h)
  box_w = jnp.where(grow, jnp.round(box_h * ratio), box_w)
  shrink = box_w * box_h > max_area
  box_h = jnp.where(shrink, box_h - 1, box_h)
  box_w = jnp.where(shrink, jnp.round(box_h * ratio), box_w)
  area = box_w * box_h
  fits = ((area >= min_area) & (area <= max_area) & (box_w <= width) &
          (box_h <= height) & (box_w > 0) & (box_h > 0))
  first = jnp.argmax(fits, axis=1)
  found = jnp.any(fits, axis=1)
  pick = lambda x, whole: jnp.where(
      found, jnp.take_along_axis(x, first[:, None], axis=1)[:, 0], whole)
  box_h, box_w = pick(box_h, height), pick(box_w, width)
  # Offsets in [0, size - box) as TF draws them (0 for a whole side).
  top = jnp.floor(jax.random.uniform(top_key, (batch,)) * (height - box_h))
  left = jnp.floor(jax.random.uniform(left_key, (batch,)) * (width - box_w))
  return jnp.stack([top, left, box_h, box_w], axis=1).astype(jnp.int32)


def inception_crop(rng: jax.Array, images: jax.Array, size: int) -> jax.Array:
  """Each float image's `inception_crop_boxes` box, resized bilinearly
  (without antialiasing) to size x size."""
  batch, height, width, channels = images.shape
  boxes = inception_crop_boxes(rng, batch, height, width).astype(jnp.float32)

  def crop(image, box):
    top, left, box_h, box_w = box[0], box[1], box[2], box[3]
    scale = jnp.stack([size / box_h, size / box_w])
    return jax.image.scale_and_translate(
        image, (size, size, channels), (0, 1), scale,
        -jnp.stack([top, left]) * scale, 'linear', antialias=False)

  return jax.vmap(crop)(images, boxes)


def central_crop(images: jax.Array, size: int) -> jax.Array:
  """The central size x size pixels, as tf.image.resize_with_crop_or_pad
  takes them from a larger image."""
  top = (images.shape[1] - size) // 2
  left = (images.shape[2] - size) // 2
  return images[:, top:top + size, left:left + size]


def preprocess_eval(images: jax.Array, size: int,
                    crop_fraction: float = 1.0) -> jax.Array:
  """`pipeline.preprocess_eval` of a uint8 batch: resize (and optionally
  take a central crop of `crop_fraction`)."""
  if crop_fraction < 1.0:
    return central_crop(
        to_rgb_float(images, int(round(size / crop_fraction))), size)
  return to_rgb_float(images, size)


def random_flip(rng: jax.Array, images: jax.Array) -> jax.Array:
  """Mirrors each image left-right with probability 1/2."""
  flip = jax.random.bernoulli(rng, 0.5, (images.shape[0],))
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)


def pad_crop(rng: jax.Array, images: jax.Array, pad: int) -> jax.Array:
  """Each image padded by `pad` pixels of -1 (black) on every side, then a
  random crop of its size: a translation by up to `pad` pixels."""
  batch, height, width, channels = images.shape
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)),
                   constant_values=-1.0)
  offsets = jax.random.randint(rng, (batch, 2), 0, 2 * pad + 1)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0),
                                 (height, width, channels))

  return jax.vmap(crop)(padded, offsets)


def random_bytes(rng: jax.Array, shape) -> jax.Array:
  """Uniform uint8 noise of `shape`: four bytes of each 32-bit draw, a
  tenth of the time of drawing bytes one by one on a CPU."""
  size = math.prod(shape)
  words = jax.random.bits(rng, (-(-size // 4),), jnp.uint32)
  return jax.lax.bitcast_convert_type(words, jnp.uint8).reshape(-1)[
      :size].reshape(shape)


def random_erase(rng: jax.Array, images: jax.Array,
                 probability: float) -> jax.Array:
  """`pipeline.random_erase` of float images in [-1, 1]: in each image, with
  `probability`, one rectangle of 2-33% of the area and aspect ratio
  0.3-3.3 becomes uniform noise of 256 levels."""
  batch, height, width, _ = images.shape
  keys = jax.random.split(rng, 6)

  def uniform(key, low=0.0, high=1.0):
    return jax.random.uniform(key, (batch, 1), jnp.float32, low, high)

  area = height * width * uniform(keys[0], 0.02, 1 / 3)
  ratio = jnp.exp(uniform(keys[1], math.log(0.3), math.log(1 / 0.3)))
  erase_h = jnp.clip(jnp.round(jnp.sqrt(area * ratio)), 1, height)
  erase_w = jnp.clip(jnp.round(jnp.sqrt(area / ratio)), 1, width)
  top = jnp.floor(uniform(keys[2]) * (height - erase_h + 1))
  left = jnp.floor(uniform(keys[3]) * (width - erase_w + 1))
  rows = jnp.arange(height, dtype=jnp.float32)[None]
  cols = jnp.arange(width, dtype=jnp.float32)[None]
  in_rows = ((rows >= top) & (rows < top + erase_h) &
             (uniform(keys[4]) < probability))
  in_cols = (cols >= left) & (cols < left + erase_w)
  inside = in_rows[:, :, None, None] & in_cols[:, None, :, None]
  noise = random_bytes(keys[5], images.shape)
  return jnp.where(inside, noise.astype(images.dtype) / 127.5 - 1.0, images)


def augment_batch(rng: jax.Array, images: jax.Array, size: int, augment: str,
                  erase_probability: float = 0.0) -> jax.Array:
  """A uint8 batch -> float32 (b, size, size, 3) in [-1, 1], augmented as
  the host pipeline's `preprocess_train` and random erasing do.

  Args:
    rng: a key for this batch.
    images: uint8 (b, h, w, 1 or 3).
    size: the (curriculum's) training image size.
    augment: one of `augmentations.DEVICE_AUGMENTATIONS`.
    erase_probability: `pp.random_erase`.
  """
  crop_rng, flip_rng, erase_rng = jax.random.split(rng, 3)
  if augment == 'inception_crop_flip':
    # Converted at its own size (the conversion is linear, so it commutes
    # with the crop's interpolation), then cropped and resized.
    images = inception_crop(crop_rng, to_rgb_float(images, None), size)
  else:
    images = to_rgb_float(images, size)
  if augment in ('pad_crop_flip', 'pad_crop'):
    images = pad_crop(crop_rng, images, max(size // 8, 1))  # 4 px at 32 px.
  if augment in ('inception_crop_flip', 'pad_crop_flip', 'flip'):
    images = random_flip(flip_rng, images)
  if erase_probability:
    images = random_erase(erase_rng, images, erase_probability)
  return images

"""The host pipeline's per-example preprocessing in jnp, for the train step.

With `config.data_on_device` the uint8 images are on the devices and each
batch is preprocessed inside the jitted step: grayscale -> RGB, uint8 ->
float in [-1, 1], a resize to the curriculum's size, then the augmentations
of `pp.augment` ('pad_crop_flip', 'pad_crop', 'flip', 'none') and random
erasing (`pp.random_erase`), each drawn per example as `data/pipeline.py`
draws them (the same distributions, not the same draws). Mixup / CutMix
follow in the step (`data/mixup.py`).
"""

import math

import jax
import jax.numpy as jnp


def to_rgb_float(images: jax.Array, size: int) -> jax.Array:
  """uint8 (b, h, w, 1 or 3) -> float32 (b, size, size, 3) in [-1, 1].

  Resized bilinearly without antialiasing, as tf.image.resize does.
  """
  images = images.astype(jnp.float32)
  if images.shape[-1] == 1:
    images = jnp.broadcast_to(images, images.shape[:-1] + (3,))
  if images.shape[1:3] != (size, size):
    images = jax.image.resize(images, (images.shape[0], size, size, 3),
                              'bilinear', antialias=False)
  return images / 127.5 - 1.0


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
  images = to_rgb_float(images, size)
  if augment in ('pad_crop_flip', 'pad_crop'):
    images = pad_crop(crop_rng, images, max(size // 8, 1))  # 4 px at 32 px.
  if augment in ('pad_crop_flip', 'flip'):
    images = random_flip(flip_rng, images)
  if erase_probability:
    images = random_erase(erase_rng, images, erase_probability)
  return images

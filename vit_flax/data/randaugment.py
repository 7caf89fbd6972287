"""RandAugment and TrivialAugment-wide on whole uint8 batches, in TensorFlow.

RandAugment (arXiv 1909.13719) applies `num_ops` operations in sequence to
each image, each drawn uniformly from `RANDAUGMENT_OPS` (torchvision's
RandAugment set) at one strength, `magnitude`, on timm's and big_vision's 0-10
scale: an op's argument is `magnitude / 10` of its maximum, with a random sign
for the signed ops. The arguments follow timm's "increasing" variants, so
that magnitude 0 leaves every image as it is:

  rotate        +-30 degrees, counter-clockwise about the centre (PIL).
  shear_x/y     +-0.3, about the top-left corner (PIL's affine (1, s, 0, ...)).
  translate_x/y +-0.45 of the width / height (timm's translate_pct).
  color, contrast, brightness, sharpness: factor 1 +- 0.9 level.
  posterize     8 - round(4 level) bits kept (torchvision's rounding).
  solarize      pixels >= 256 (1 - level) are inverted (timm).
  identity, autocontrast, equalize: no argument.

TrivialAugment-wide (arXiv 2103.10158) applies one op per image at a strength
drawn uniformly from 31 bins, with torchvision's `TrivialAugmentWide` ranges:
rotate 135 degrees, shear 0.99, translate 32 whole pixels, enhance factors
1 +- 0.99, posterize 8 down to 2 bits, solarize threshold 255 down to 0.

The ops follow PIL's definitions (ImageOps, ImageEnhance), as timm and
torchvision do: enhance ops blend with a degenerate image (black for
brightness, the mean luminance for contrast, the luminance for color, the
3x3 SMOOTH filter on interior pixels for sharpness) and truncate to uint8;
autocontrast stretches each channel's min-max to 0-255 (identity where a
channel is flat); equalize uses PIL's per-channel lookup table. Geometric ops
use PIL's pixel-centre convention, resample bilinearly (as timm) or, at
about half the resampling cost, to the nearest pixel (torchvision's and
big_vision's default), and put `fill` where no input pixel maps; at the edge
of the covered area bilinear sampling blends with `fill` where PIL's cuts
off.

Everything is a stateless whole-batch op keyed by a `[2]`-shaped seed, for
`tf.data` maps on batches: each example's op, sign and bin are its own draws,
and the batch is partitioned by op so that each image costs only its own op.
"""

import dataclasses
import math
import numbers

from vit_flax import errors
from vit_flax.data import tensorflow_loader

tf = tensorflow_loader.import_tensorflow()

RANDAUGMENT_OPS = ('identity', 'autocontrast', 'equalize', 'rotate',
                   'solarize', 'color', 'posterize', 'contrast', 'brightness',
                   'sharpness', 'shear_x', 'shear_y', 'translate_x',
                   'translate_y')
MAX_NUM_OPS = 10
MAX_MAGNITUDE = 10
TRIVIAL_AUGMENT_BINS = 31
INTERPOLATIONS = ('bilinear', 'nearest')

_OP = {name: i for i, name in enumerate(RANDAUGMENT_OPS)}
_AFFINE_OPS = ('rotate', 'shear_x', 'shear_y', 'translate_x', 'translate_y')
# PIL's RGB -> L weights, ITU-R 601-2's (0.299, 0.587, 0.114) in 16 bits.
_LUMA_FIXED_POINT = (19595, 38470, 7471)


def check_randaugment(num_ops, magnitude):
  """Raises ConfigError unless RandAugment's settings are usable."""
  if (isinstance(num_ops, bool) or not isinstance(num_ops, numbers.Integral)
      or not 1 <= num_ops <= MAX_NUM_OPS):
    raise errors.ConfigError(
        f'RandAugment num_ops={num_ops!r} is not a usable number of ops: '
        f'use an integer from 1 to {MAX_NUM_OPS} (2 is the common choice), '
        'the number of ops applied to each image in sequence.')
  if (isinstance(magnitude, bool) or not isinstance(magnitude, numbers.Real)
      or not 0 <= magnitude <= MAX_MAGNITUDE):
    raise errors.ConfigError(
        f'RandAugment magnitude={magnitude!r} is outside the valid range: '
        f'use a number from 0 (no change) to {MAX_MAGNITUDE} (each op at '
        'its strongest), as in timm and big_vision (9 is common).')


def _check_fill(fill):
  if (isinstance(fill, bool) or not isinstance(fill, numbers.Real)
      or not 0 <= fill <= 255):
    raise errors.ConfigError(
        f'Augmentation fill={fill!r} is not a uint8 pixel value: use a '
        'number from 0 to 255 (128, mid-grey, is the default).')


def _check_interpolation(interpolation):
  if interpolation not in INTERPOLATIONS:
    raise errors.ConfigError(
        f'Augmentation interpolation={interpolation!r} is unknown; use one '
        f'of {INTERPOLATIONS} (bilinear as timm; nearest as torchvision and '
        'big_vision, at about half the cost).')


def _check_images(images) -> tf.Tensor:
  images = tf.convert_to_tensor(images)
  shape = images.shape
  if (images.dtype != tf.uint8 or shape.rank != 4 or shape[-1] not in (1, 3)
      or None in shape[1:]):
    raise errors.UserError(
        f'Augmentation needs a batch of uint8 images (batch, height, width, '
        f'channels) with 1 or 3 channels and a known height and width; got '
        f'dtype {images.dtype.name} and shape {shape}.')
  return images


# The ops. Each takes a part of the batch, (n, h, w, c) uint8, and one
# float32 argument per image, (n,), and returns the part's new images.


def _per_image(values):
  """(n,) -> (n, 1, 1, 1), to broadcast over each image's pixels."""
  return tf.reshape(values, [-1, 1, 1, 1])


def _blend(degenerate, pixels, factor):
  """PIL's ImageEnhance on float32 `pixels`: degenerate + factor (pixels -
  degenerate), in float32 and truncated to uint8 as PIL does. `degenerate`
  is integer-valued, so factor 1 gives the pixels back exactly."""
  blended = degenerate + _per_image(factor) * (pixels - degenerate)
  return tf.cast(tf.clip_by_value(blended, 0.0, 255.0), tf.uint8)


def _identity(images, unused_arg):
  return images


def _solarize(images, threshold):
  """Inverts the pixels >= threshold."""
  # x >= t for integer x is x >= ceil(t). The margin keeps float round-off
  # in the policies' integer thresholds (255 (1 - k / 30) at even k) from
  # moving them up by one.
  threshold = tf.math.ceil(_per_image(threshold) - 1e-3)
  # Inverting is xor with 255; no pixel reaches a threshold of 256 or more.
  # (Cheaper than a broadcasting tf.where.)
  mask = tf.cast(threshold <= 255, tf.uint8) * 255
  at_or_above = tf.cast(
      images >= tf.cast(tf.clip_by_value(threshold, 0, 255), tf.uint8),
      tf.uint8)
  return tf.bitwise.bitwise_xor(images, at_or_above * mask)


def _posterize(images, bits):
  """Keeps the `bits` most significant bits of each value."""
  bits = tf.clip_by_value(tf.cast(tf.round(bits), tf.int32), 0, 8)
  mask = tf.cast(256 - tf.bitwise.left_shift(1, 8 - bits), tf.uint8)
  return tf.bitwise.bitwise_and(images, _per_image(mask))


def _brightness(images, factor):
  """Blends with black: x factor, truncated."""
  scaled = tf.cast(images, tf.float32) * _per_image(factor)
  return tf.cast(tf.minimum(scaled, 255.0), tf.uint8)


def _luminance(images):
  """PIL's RGB -> L conversion, in its 16-bit fixed point: (n, h, w, 1)
  float32. Exact in float32, as every sum stays below 2^24."""
  pixels = tf.cast(images, tf.float32)
  if images.shape[-1] == 1:
    return pixels
  weights = _LUMA_FIXED_POINT
  weighted = (pixels[..., :1] * weights[0] + pixels[..., 1:2] * weights[1] +
              pixels[..., 2:] * weights[2])
  return tf.floor((weighted + 0x8000) * (1 / 0x10000))


def _contrast(images, factor):
  """Blends with the image's mean luminance, rounded as PIL rounds it."""
  mean = tf.reduce_mean(_luminance(images), axis=[1, 2], keepdims=True)
  return _blend(tf.floor(mean + 0.5), tf.cast(images, tf.float32), factor)


def _color(images, factor):
  """Blends with the luminance image: a grey image's colour is itself."""
  if images.shape[-1] == 1:
    return images
  return _blend(_luminance(images), tf.cast(images, tf.float32), factor)


def _sharpness(images, factor):
  """Blends with PIL's SMOOTH filter, on interior pixels only (as PIL)."""
  height, width = images.shape[1:3]
  if height < 3 or width < 3:
    return images  # No interior pixels.
  pixels = tf.cast(images, tf.float32)
  # The kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 as a separable 3x3 box
  # sum plus 4 x the centre: exact in float32.
  rows = pixels[:, :, :-2] + pixels[:, :, 1:-1] + pixels[:, :, 2:]
  box = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]
  centre = pixels[:, 1:-1, 1:-1]
  smooth = tf.round((box + 4 * centre) * (1 / 13))
  inside = _blend(smooth, centre, factor)
  middle = tf.concat([images[:, 1:-1, :1], inside, images[:, 1:-1, -1:]],
                     axis=2)
  return tf.concat([images[:, :1], middle, images[:, -1:]], axis=1)


def _autocontrast(images, unused_arg):
  """Maps each channel's [min, max] onto [0, 255]; flat channels stay."""
  low = tf.cast(tf.reduce_min(images, axis=[1, 2], keepdims=True), tf.float32)
  high = tf.cast(tf.reduce_max(images, axis=[1, 2], keepdims=True),
                 tf.float32)
  flat = high <= low
  # Flat channels: offset 0, scale 1 (torchvision's way), no select.
  low = tf.where(flat, 0.0, low)
  scale = tf.where(flat, 1.0, 255 / tf.maximum(high - low, 1.0))
  # floor((x - low) 255 / (high - low)), exactly: the float error is below
  # 1e-4 and a non-integer quotient is at least 1 / 255 below the next
  # integer, so the margin of 1e-3 never crosses one. (PIL's float scale
  # can round 255 down to 254.)
  stretched = tf.cast(images, tf.float32) * scale + (1e-3 - low * scale)
  return tf.cast(stretched, tf.uint8)


def _equalize(images, unused_arg):
  """PIL's ImageOps.equalize per image and channel, by lookup tables."""
  n = tf.shape(images)[0]
  height, width, channels = images.shape[1:]
  # Each value's place in a flat table of 256 entries per image and channel.
  rows = tf.reshape(tf.range(n * channels) * 256, [n, 1, 1, channels])
  places = tf.cast(images, tf.int32) + rows
  histograms = tf.reshape(
      tf.math.bincount(places, minlength=n * channels * 256,
                       maxlength=n * channels * 256), [n * channels, 256])
  # PIL's step leaves out the count of the highest value present.
  top = tf.reshape(tf.cast(tf.reduce_max(images, axis=[1, 2]), tf.int32),
                   [-1])
  top_count = tf.gather(histograms, top, batch_dims=1)
  step = (height * width - top_count)[:, None] // 255
  below = tf.cumsum(histograms, axis=1, exclusive=True)
  tables = tf.minimum((below + step // 2) // tf.maximum(step, 1), 255)
  tables = tf.where(step > 0, tables, tf.range(256)[None])
  return tf.gather(tf.reshape(tf.cast(tables, tf.uint8), [-1]), places)


def _inverse_maps(ops, args, height, width):
  """Each image's inverse map, output -> input pixel indices, as (a0, a1,
  a2, b0, b1, b2): x_in = a0 x + a1 y + a2, y_in = b0 x + b1 y + b2.

  They are PIL's maps, x_in = M x_out + t in continuous coordinates (pixel
  centres at index + 0.5): rotations keep the centre (w / 2, h / 2) in
  place; shears and translations move from the top-left corner."""

  def is_op(name):
    return tf.equal(ops, _OP[name])

  zeros, ones = tf.zeros_like(args), tf.ones_like(args)
  angle = tf.where(is_op('rotate'), args * (math.pi / 180), zeros)
  cos, sin = tf.cos(angle), tf.sin(angle)
  m00 = tf.where(is_op('rotate'), cos, ones)
  m01 = tf.where(is_op('rotate'), -sin,
                 tf.where(is_op('shear_x'), args, zeros))
  m10 = tf.where(is_op('rotate'), sin, tf.where(is_op('shear_y'), args, zeros))
  m11 = m00
  cx, cy = width / 2, height / 2
  t0 = tf.where(is_op('rotate'), cx - m00 * cx - m01 * cy,
                tf.where(is_op('translate_x'), args, zeros))
  t1 = tf.where(is_op('rotate'), cy - m10 * cx - m11 * cy,
                tf.where(is_op('translate_y'), args, zeros))
  # Index coordinates: x_in = M x_out + (M (0.5, 0.5) + t - 0.5).
  return (m00, m01, t0 + 0.5 * (m00 + m01) - 0.5,
          m10, m11, t1 + 0.5 * (m10 + m11) - 0.5)


# The maps' coefficients are rounded to multiples of 2^-12 (moving points by
# at most 1e-4 pixels per pixel of distance), so that round-off in computing
# them, which graph rewrites can change, changes neither them nor which way
# ties of bilinear samples round (common with round arguments: a shift of
# 4.05 px): eager and graph results agree.
_MAP_STEP = 2.0**-12


def _affine(images, ops, args, fill, interpolation):
  """Rotations, shears and translations: one ImageProjectiveTransformV3
  call for all."""
  height, width = images.shape[1:3]
  maps = [tf.round(m / _MAP_STEP) * _MAP_STEP
          for m in _inverse_maps(ops, args, height, width)]
  if interpolation == 'bilinear':  # On uint8 the op truncates.
    images = tf.cast(images, tf.float32)
  zeros = tf.zeros_like(args)
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=images, transforms=tf.stack(maps + [zeros, zeros], axis=1),
      output_shape=tf.constant([height, width]),
      fill_value=tf.constant(fill, tf.float32),
      interpolation=interpolation.upper(), fill_mode='CONSTANT')
  if interpolation == 'nearest':
    return out
  return tf.cast(tf.round(out), tf.uint8)


_POINTWISE = {
    'identity': _identity, 'autocontrast': _autocontrast,
    'equalize': _equalize, 'solarize': _solarize, 'color': _color,
    'posterize': _posterize, 'contrast': _contrast,
    'brightness': _brightness, 'sharpness': _sharpness,
}
# The batch's parts: one per non-geometric op, and the geometric ops in one.
_PARTS = tuple(_POINTWISE) + ('affine',)
_PART_OF_OP = tuple(_PARTS.index('affine' if name in _AFFINE_OPS else name)
                    for name in RANDAUGMENT_OPS)


def apply_ops(images, ops, args, fill=128, interpolation='bilinear'):
  """Applies op `RANDAUGMENT_OPS[ops[i]]` with argument `args[i]` to image i.

  Args:
    images: (batch, height, width, channels) uint8, 1 or 3 channels.
    ops: (batch,) integer op indices into RANDAUGMENT_OPS.
    args: (batch,) float arguments in each op's own units: degrees
      (counter-clockwise) for rotate, shear factors, pixels for translations
      (positive moves the content left / up, as PIL's affine offsets), enhance
      factors (1 keeps the image), bits kept for posterize, the threshold for
      solarize (pixels >= it are inverted); ignored by the other ops.
    fill: the value of pixels that geometric ops leave uncovered.
    interpolation: how geometric ops resample, 'bilinear' or 'nearest'.

  Returns:
    The images, uint8, of the same shape. Each image's result depends only
    on its own op and argument.
  """
  images = _check_images(images)
  _check_fill(fill)
  _check_interpolation(interpolation)
  ops = tf.cast(ops, tf.int32)
  args = tf.cast(args, tf.float32)
  parts = tf.gather(tf.constant(_PART_OF_OP, tf.int32), ops)
  num_parts = len(_PARTS)
  positions = tf.dynamic_partition(tf.range(tf.shape(images)[0]), parts,
                                   num_parts)
  part_images = tf.dynamic_partition(images, parts, num_parts)
  part_ops = tf.dynamic_partition(ops, parts, num_parts)
  part_args = tf.dynamic_partition(args, parts, num_parts)
  results = []
  for name, x, part_op, arg in zip(_PARTS, part_images, part_ops, part_args):
    if name == 'affine':
      results.append(_affine(x, part_op, arg, fill, interpolation))
    else:
      results.append(_POINTWISE[name](x, arg))
  out = tf.dynamic_stitch(positions, results)
  return tf.ensure_shape(out, images.shape)


# The policies: each image's op, sign and strength, and the op's argument.


@dataclasses.dataclass(frozen=True)
class _Ranges:
  """Each op's argument at level 1 (level 0 being the identity)."""
  rotate: float  # Degrees.
  shear: float
  translate: float  # A fraction of the size, or pixels with `pixels`.
  enhance: float  # Factors 1 +- enhance.
  posterize: float  # Bits removed at level 1.
  solarize: float  # The threshold at level 0, down to 0 at level 1.
  pixels: bool = False  # Translations in whole pixels, not fractions.


_RANDAUGMENT_RANGES = _Ranges(rotate=30.0, shear=0.3, translate=0.45,
                              enhance=0.9, posterize=4, solarize=256.0)
_TRIVIAL_AUGMENT_WIDE_RANGES = _Ranges(
    rotate=135.0, shear=0.99, translate=32.0, enhance=0.99, posterize=6,
    solarize=255.0, pixels=True)


def _op_args(ops, level, sign, ranges: _Ranges, height, width):
  """Each image's argument for its op at `level` (n,) in [0, 1]."""
  if ranges.pixels:  # torchvision: int() of the signed number of pixels.
    shift_x = shift_y = tf.floor(ranges.translate * level)
  else:
    shift_x = ranges.translate * width * level
    shift_y = ranges.translate * height * level
  zeros = tf.zeros_like(level)
  enhance = 1.0 + sign * ranges.enhance * level
  by_op = {
      'rotate': sign * ranges.rotate * level,
      'solarize': ranges.solarize * (1.0 - level),
      'color': enhance, 'contrast': enhance, 'brightness': enhance,
      'sharpness': enhance,
      'posterize': 8.0 - tf.round(ranges.posterize * level),
      'shear_x': sign * ranges.shear * level,
      'shear_y': sign * ranges.shear * level,
      'translate_x': sign * shift_x, 'translate_y': sign * shift_y,
  }
  table = tf.stack([by_op.get(name, zeros) for name in RANDAUGMENT_OPS],
                   axis=1)
  return tf.gather(table, ops, batch_dims=1)


def _draw_ops(images, seed, level_of, ranges: _Ranges, fill, interpolation):
  """One op per image: drawn op, sign and `level_of(level_seed, n)`."""
  op_seed, sign_seed, level_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 3))
  n = tf.shape(images)[0]
  ops = tf.random.stateless_uniform([n], op_seed, 0, len(RANDAUGMENT_OPS),
                                    tf.int32)
  sign = tf.where(tf.random.stateless_uniform([n], sign_seed) < 0.5, -1.0,
                  1.0)
  args = _op_args(ops, level_of(level_seed, n), sign, ranges,
                  images.shape[1], images.shape[2])
  return apply_ops(images, ops, args, fill, interpolation)


def randaugment(images, seed, num_ops: int, magnitude: float, fill=128,
                interpolation: str = 'bilinear'):
  """RandAugment of a batch: `num_ops` random ops per image at `magnitude`.

  Args:
    images: (batch, height, width, channels) uint8, 1 or 3 channels.
    seed: a [2]-shaped integer seed; the result is a function of it.
    num_ops: ops applied to each image in sequence, 1 to MAX_NUM_OPS.
    magnitude: every op's strength, 0 (none) to MAX_MAGNITUDE.
    fill: the value of pixels that geometric ops leave uncovered.
    interpolation: how geometric ops resample, 'bilinear' or 'nearest'.

  Returns:
    The augmented images, uint8, of the same shape.
  """
  check_randaugment(num_ops, magnitude)
  images = _check_images(images)
  level = magnitude / MAX_MAGNITUDE

  def level_of(unused_seed, n):
    return tf.fill([n], tf.constant(level, tf.float32))

  for op_seed in tf.unstack(
      tf.random.experimental.stateless_split(seed, num_ops)):
    images = _draw_ops(images, op_seed, level_of, _RANDAUGMENT_RANGES, fill,
                       interpolation)
  return images


def trivial_augment_wide(images, seed, fill=128,
                         interpolation: str = 'bilinear'):
  """TrivialAugment-wide of a batch: one random op per image, at a random
  strength of 31 bins, with torchvision's wide ranges.

  Args:
    images: (batch, height, width, channels) uint8, 1 or 3 channels.
    seed: a [2]-shaped integer seed; the result is a function of it.
    fill: the value of pixels that geometric ops leave uncovered.
    interpolation: how geometric ops resample, 'bilinear' or 'nearest'.

  Returns:
    The augmented images, uint8, of the same shape.
  """
  images = _check_images(images)
  last_bin = TRIVIAL_AUGMENT_BINS - 1

  def level_of(seed, n):
    bins = tf.random.stateless_uniform([n], seed, 0, last_bin + 1, tf.int32)
    return tf.cast(bins, tf.float32) / last_bin

  return _draw_ops(images, seed, level_of, _TRIVIAL_AUGMENT_WIDE_RANGES, fill,
                   interpolation)

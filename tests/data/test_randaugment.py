"""Tests of vit_flax.randaugment: each op against PIL, the policies' draws."""

import math

import numpy as np
from PIL import Image
from PIL import ImageEnhance
from PIL import ImageOps
import pytest
import tensorflow as tf

from vit_flax import errors
from vit_flax.data import randaugment

OPS = randaugment.RANDAUGMENT_OPS
SEED = tf.constant([3, 7], tf.int64)
# Grayscale, RGB, and a non-square RGB size.
SHAPES = [(5, 28, 28, 1), (5, 32, 32, 3), (5, 20, 13, 3)]
# An argument for each op that changes images.
ARGS = {'identity': 0, 'autocontrast': 0, 'equalize': 0, 'rotate': 20,
        'solarize': 100, 'color': 0.3, 'posterize': 3, 'contrast': 1.7,
        'brightness': 0.6, 'sharpness': 1.8, 'shear_x': 0.25,
        'shear_y': -0.25, 'translate_x': 3.5, 'translate_y': -4}
# Each op's argument that should leave images as they are.
NO_CHANGE = {'rotate': 0, 'solarize': 256, 'color': 1, 'posterize': 8,
             'contrast': 1, 'brightness': 1, 'sharpness': 1, 'shear_x': 0,
             'shear_y': 0, 'translate_x': 0, 'translate_y': 0}


def random_images(shape, seed=0, low=0, high=256):
  rng = np.random.default_rng(seed)
  return rng.integers(low, high, shape).astype(np.uint8)


def apply(name, arg, images, fill=128, interpolation='bilinear'):
  n = len(images)
  return randaugment.apply_ops(images, [OPS.index(name)] * n, [arg] * n,
                               fill, interpolation).numpy()


def with_pil(function, images):
  """`function` applied by PIL to each image (mode L or RGB)."""
  out = []
  for image in images:
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    out.append(np.asarray(function(pil)).reshape(image.shape))
  return np.stack(out)


def uniform_histogram_images(n, seed=0):
  """RGB images holding each value twice per channel, in random places:
  autocontrast and equalize leave them as they are."""
  rng = np.random.default_rng(seed)
  values = np.tile(np.arange(256, dtype=np.uint8), 2)
  return np.stack([
      np.stack([rng.permutation(values) for _ in range(3)], -1).reshape(
          32, 16, 3) for _ in range(n)])


@pytest.mark.parametrize('shape', SHAPES)
def test_every_op_keeps_shape_and_dtype_and_changes_images(shape):
  images = random_images(shape)
  for name in OPS:
    out = apply(name, ARGS[name], images)
    assert out.shape == shape and out.dtype == np.uint8, name
    if name == 'identity' or (name == 'color' and shape[-1] == 1):
      np.testing.assert_array_equal(out, images)
    else:
      assert (out != images).any(), name
  for out in (randaugment.randaugment(images, SEED, 2, 9),
              randaugment.trivial_augment_wide(images, SEED)):
    assert out.shape == shape and out.dtype == tf.uint8


def test_ops_on_images_smaller_than_the_sharpness_kernel():
  images = random_images((3, 2, 1, 3))
  for name in OPS:
    assert apply(name, ARGS[name], images).shape == images.shape, name
  np.testing.assert_array_equal(apply('sharpness', 1.9, images), images)


@pytest.mark.parametrize('channels', [1, 3])
@pytest.mark.parametrize('interpolation', randaugment.INTERPOLATIONS)
def test_no_change_arguments_are_the_identity(channels, interpolation):
  images = random_images((4, 20, 13, channels))
  for name, arg in NO_CHANGE.items():
    np.testing.assert_array_equal(
        apply(name, arg, images, interpolation=interpolation), images,
        err_msg=name)


def test_magnitude_zero_is_the_identity():
  # Every op at level 0 keeps these images, autocontrast and equalize too.
  images = uniform_histogram_images(16)
  np.testing.assert_array_equal(apply('equalize', 0, images), images)
  for seed in range(3):
    out = randaugment.randaugment(images, tf.constant([seed, 1], tf.int64),
                                  num_ops=3, magnitude=0)
    np.testing.assert_array_equal(out, images)


@pytest.mark.parametrize('channels', [1, 3])
def test_pixel_ops_match_pil(channels):
  images = random_images((4, 19, 24, channels), low=20, high=230)
  images[0] = 90  # A flat image: autocontrast and equalize keep it.
  images[1, :, :6] = 10  # A histogram with a peak.
  pil_ops = {
      'equalize': ImageOps.equalize,
      'solarize': lambda im: ImageOps.solarize(im, 100),
      'posterize': lambda im: ImageOps.posterize(im, 3),
  }
  for factor in (0.1, 0.55, 1.9):
    for name, enhance in (('brightness', ImageEnhance.Brightness),
                          ('contrast', ImageEnhance.Contrast),
                          ('color', ImageEnhance.Color),
                          ('sharpness', ImageEnhance.Sharpness)):
      np.testing.assert_array_equal(
          apply(name, factor, images),
          with_pil(lambda im, e=enhance: e(im).enhance(factor), images),
          err_msg=f'{name} {factor}')
  for name, function in pil_ops.items():
    np.testing.assert_array_equal(
        apply(name, ARGS[name], images), with_pil(function, images),
        err_msg=name)
  # PIL's float scale rounds some values one lower than the exact one.
  difference = (apply('autocontrast', 0, images).astype(int) -
                with_pil(ImageOps.autocontrast, images))
  assert difference.min() >= 0 and difference.max() <= 1


@pytest.mark.parametrize('channels', [1, 3])
def test_geometric_ops_match_pil_bilinear(channels):
  # A frame of fill-valued pixels: there PIL's edge rule (replicate the
  # border) and TensorFlow's (blend with the fill) agree.
  images = random_images((3, 25, 18, channels))
  images[:, [0, -1]] = 128
  images[:, :, [0, -1]] = 128
  fill = (128,) * channels if channels == 3 else 128

  def affine(*matrix):
    return lambda im: im.transform(im.size, Image.AFFINE, matrix,
                                   resample=Image.BILINEAR, fillcolor=fill)

  cases = [('rotate', 17, lambda im: im.rotate(
      17, resample=Image.BILINEAR, fillcolor=fill)),
           ('rotate', -90, lambda im: im.rotate(
               -90, resample=Image.BILINEAR, fillcolor=fill)),
           ('shear_x', 0.99, affine(1, 0.99, 0, 0, 1, 0)),
           ('shear_y', -0.3, affine(1, 0, 0, -0.3, 1, 0)),
           ('translate_x', 2.3, affine(1, 0, 2.3, 0, 1, 0)),
           ('translate_y', -7.7, affine(1, 0, 0, 0, 1, -7.7))]
  for name, arg, function in cases:
    # PIL truncates what it interpolates, randaugment rounds it (and rounds
    # its maps to steps of 2^-12): mostly within 1.
    difference = np.abs(apply(name, arg, images).astype(int) -
                        with_pil(function, images))
    assert difference.max() <= 2 and (difference > 1).mean() < 0.01, name


def test_known_answers():
  images = random_images((2, 6, 7, 3))
  np.testing.assert_array_equal(
      apply('brightness', 0.5, images),
      np.floor(images * np.float32(0.5)).astype(np.uint8))
  np.testing.assert_array_equal(
      apply('brightness', 1.9, images),
      np.minimum(np.floor(images * np.float32(1.9)), 255).astype(np.uint8))
  np.testing.assert_array_equal(apply('solarize', 128, images),
                                np.where(images >= 128, 255 - images, images))
  np.testing.assert_array_equal(apply('solarize', 0, images), 255 - images)
  np.testing.assert_array_equal(apply('posterize', 4, images), images & 0xF0)
  np.testing.assert_array_equal(apply('posterize', 1, images), images & 0x80)
  # Translations by whole pixels move pixels and fill what they uncover.
  moved = apply('translate_x', 3, images, fill=7)
  np.testing.assert_array_equal(moved[:, :, :4], images[:, :, 3:])
  assert (moved[:, :, 4:] == 7).all()
  moved = apply('translate_y', -2, images, fill=200)
  np.testing.assert_array_equal(moved[:, 2:], images[:, :4])
  assert (moved[:, :2] == 200).all()
  # Half a turn maps pixel (i, j) to (h-1-i, w-1-j), a quarter turn of a
  # square image (i, j) to (j, n-1-i).
  image = random_images((2, 5, 6, 1))
  square = random_images((2, 6, 6, 1))
  for interpolation in randaugment.INTERPOLATIONS:
    np.testing.assert_array_equal(
        apply('rotate', 180, image, interpolation=interpolation),
        image[:, ::-1, ::-1])
    np.testing.assert_array_equal(
        apply('rotate', 90, square, interpolation=interpolation),
        np.rot90(square, 1, axes=(1, 2)))
  # Nearest sampling takes a pixel of the image; ties go to the next one.
  moved = apply('translate_x', 1.5, images, interpolation='nearest')
  np.testing.assert_array_equal(moved[:, :, :5], images[:, :, 2:])


def test_autocontrast_stretches_each_channel_to_the_full_range():
  images = random_images((3, 10, 9, 3), low=60, high=140)
  out = apply('autocontrast', 0, images)
  assert (out.min(axis=(1, 2)) == 0).all()
  assert (out.max(axis=(1, 2)) == 255).all()
  # Order-preserving within each channel.
  flat_in = images.transpose(0, 3, 1, 2).reshape(9, -1).astype(int)
  flat_out = out.transpose(0, 3, 1, 2).reshape(9, -1).astype(int)
  for a, b in zip(flat_in, flat_out):
    order = np.argsort(a, kind='stable')
    assert (np.diff(b[order]) >= 0).all()


def test_equalize_flattens_the_histogram():
  # Skewed images: most pixels dark.
  rng = np.random.default_rng(0)
  images = (255 * rng.random((2, 32, 32, 1)) ** 4).astype(np.uint8)

  def flatness(image):
    """How far the share of pixels below each value present, v, is from
    v / 255: 0 for a flat histogram."""
    values = image.ravel()
    present = np.unique(values)
    below = np.searchsorted(np.sort(values), present) / values.size
    return np.abs(below - present / 255).max()

  for image, equalized in zip(images, apply('equalize', 0, images)):
    assert flatness(image) > 0.3
    assert flatness(equalized) < 0.02


def test_deterministic_given_the_seed_in_eager_and_graph_mode():
  images = random_images((16, 12, 10, 3))
  first = randaugment.randaugment(images, SEED, 2, 9)
  graph = tf.function(lambda x, s: randaugment.randaugment(x, s, 2, 9))
  np.testing.assert_array_equal(first, randaugment.randaugment(
      images, SEED, 2, 9))
  np.testing.assert_array_equal(first, graph(images, SEED))
  other = randaugment.randaugment(images, SEED + 1, 2, 9)
  assert (first.numpy() != other.numpy()).any(axis=(1, 2, 3)).mean() > 0.5
  wide = randaugment.trivial_augment_wide(images, SEED)
  np.testing.assert_array_equal(wide, randaugment.trivial_augment_wide(
      images, SEED))
  ds = tf.data.Dataset.from_tensors(images).map(
      lambda x: randaugment.trivial_augment_wide(x, SEED))
  np.testing.assert_array_equal(wide, next(iter(ds)))
  other = randaugment.trivial_augment_wide(images, SEED + 1)
  assert (wide.numpy() != other.numpy()).any(axis=(1, 2, 3)).mean() > 0.5


def test_each_example_depends_only_on_its_own_draw():
  images = random_images((12, 12, 10, 3))
  others = images.copy()
  others[1:] = random_images((11, 12, 10, 3), seed=1)
  for augment in (lambda x: randaugment.randaugment(x, SEED, 2, 9),
                  lambda x: randaugment.trivial_augment_wide(x, SEED)):
    np.testing.assert_array_equal(augment(images)[0], augment(others)[0])
  # Alone or with others, of the same or another op, the same result.
  ops = np.arange(12) % len(OPS)
  args = np.linspace(0.5, 1.5, 12)
  together = randaugment.apply_ops(images, ops, args).numpy()
  for i in range(12):
    alone = randaugment.apply_ops(images[i:i + 1], ops[i:i + 1],
                                  args[i:i + 1])
    np.testing.assert_array_equal(together[i], alone[0], err_msg=str(i))


def candidates(image, ops_and_args):
  """`image` under each (op, arg): (len(ops_and_args), h, w, c)."""
  ops, args = zip(*ops_and_args)
  tiled = np.repeat(image[None], len(ops), axis=0)
  return randaugment.apply_ops(tiled, ops, args).numpy()


def is_one_of(image, options):
  return (options == image[None]).all(axis=(1, 2, 3)).any()


def test_randaugment_applies_ops_at_the_magnitudes_strength():
  height, width = 12, 10
  images = random_images((24, height, width, 3))
  level = 0.5
  signed = {'rotate': 30 * level, 'shear_x': 0.3 * level,
            'shear_y': 0.3 * level, 'translate_x': 0.45 * width * level,
            'translate_y': 0.45 * height * level}
  signed.update({name: 0.9 * level for name in (
      'color', 'contrast', 'brightness', 'sharpness')})
  ops_and_args = [(OPS.index(name), 0) for name in (
      'identity', 'autocontrast', 'equalize')]
  ops_and_args += [(OPS.index('posterize'), 6), (OPS.index('solarize'), 128)]
  for name, value in signed.items():
    base = 1 if name in ('color', 'contrast', 'brightness', 'sharpness') else 0
    ops_and_args += [(OPS.index(name), base + value),
                     (OPS.index(name), base - value)]
  out = randaugment.randaugment(images, SEED, num_ops=1, magnitude=5).numpy()
  for image, result in zip(images, out):
    assert is_one_of(result, candidates(image, ops_and_args))
  assert (out != images).any(axis=(1, 2, 3)).mean() > 0.5


def test_trivial_augment_wide_draws_from_its_wide_ranges():
  images = random_images((12, 9, 8, 3))
  levels = np.arange(31) / 30
  ops_and_args = [(OPS.index(name), 0) for name in (
      'identity', 'autocontrast', 'equalize')]
  for level in levels:
    ops_and_args += [(OPS.index('posterize'), 8 - round(6 * level)),
                     (OPS.index('solarize'), 255 * (1 - level))]
    signed = {'rotate': 135 * level, 'shear_x': 0.99 * level,
              'shear_y': 0.99 * level,
              'translate_x': math.floor(32 * level + 1e-9),
              'translate_y': math.floor(32 * level + 1e-9)}
    for name, value in signed.items():
      ops_and_args += [(OPS.index(name), value), (OPS.index(name), -value)]
    for name in ('color', 'contrast', 'brightness', 'sharpness'):
      ops_and_args += [(OPS.index(name), 1 + 0.99 * level),
                       (OPS.index(name), 1 - 0.99 * level)]
  out = randaugment.trivial_augment_wide(images, SEED).numpy()
  for image, result in zip(images, out):
    assert is_one_of(result, candidates(image, ops_and_args))


@pytest.mark.parametrize('num_ops', [0, 11, 2.5, True, '2', None])
def test_bad_num_ops_is_a_clear_error(num_ops):
  with pytest.raises(errors.ConfigError, match='num_ops') as error:
    randaugment.check_randaugment(num_ops, 9)
  assert repr(num_ops) in str(error.value) and '1 to 10' in str(error.value)
  with pytest.raises(errors.ConfigError):
    randaugment.randaugment(random_images((1, 4, 4, 1)), SEED, num_ops, 9)


@pytest.mark.parametrize('magnitude', [-1, 10.5, float('nan'), '9', None])
def test_bad_magnitude_is_a_clear_error(magnitude):
  with pytest.raises(errors.ConfigError, match='magnitude') as error:
    randaugment.check_randaugment(2, magnitude)
  assert repr(magnitude) in str(error.value)
  assert '0 (no change) to 10' in str(error.value)


def test_good_settings_and_bad_images_or_fill():
  randaugment.check_randaugment(1, 0)
  randaugment.check_randaugment(10, 10.0)
  randaugment.check_randaugment(np.int64(2), np.float32(9.5))
  with pytest.raises(errors.UserError, match='float32'):
    randaugment.randaugment(np.zeros((1, 4, 4, 3), np.float32), SEED, 2, 9)
  with pytest.raises(errors.UserError, match='1 or 3 channels'):
    randaugment.trivial_augment_wide(np.zeros((1, 4, 4, 4), np.uint8), SEED)
  with pytest.raises(errors.ConfigError, match='fill=300'):
    randaugment.randaugment(random_images((1, 4, 4, 1)), SEED, 2, 9, fill=300)
  with pytest.raises(errors.ConfigError, match="'bicubic'.*nearest"):
    randaugment.trivial_augment_wide(random_images((1, 4, 4, 1)), SEED,
                                     interpolation='bicubic')

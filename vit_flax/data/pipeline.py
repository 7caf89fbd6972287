"""The host input pipeline (tf.data): training batches and the evaluation split.

Training batches are a pure function of (seed, step): every epoch is shuffled
with its own seed and every augmentation is stateless, keyed by the example's
position in the stream (random erasing, done on whole batches, by that of the
batch's first example). A pipeline can therefore start at any step, which is
what exact resume and resolution curricula need.
"""

import functools
import math
from typing import Any, Dict, Iterator, Optional

from absl import logging

from vit_flax import errors
from vit_flax.data import augmentations
from vit_flax.data import curriculum
from vit_flax.data import datasets
from vit_flax.data import randaugment
from vit_flax.data import sources
from vit_flax.data import tensorflow_loader

tf = tensorflow_loader.import_tensorflow()

AUGMENTATIONS = augmentations.AUGMENTATIONS
resolve_augment = augmentations.resolve_augment
_EPOCH_SEED_STRIDE = 1_000_003


# Preprocessing.


def _to_rgb_float(image, size):
  """uint8 ([b,] h, w, 1 or 3) -> float32 ([b,] size, size, 3) in [-1, 1]."""
  image = tf.convert_to_tensor(image)
  if image.shape[-1] == 1:
    image = tf.image.grayscale_to_rgb(image)
  image = tf.cast(image, tf.float32)
  if image.shape[-3] != size or image.shape[-2] != size:
    image = tf.image.resize(image, (size, size))
  return image / 127.5 - 1.0


def random_bytes(shape, seed):
  """Uniform uint8 noise of `shape`: eight bytes from each 64-bit draw, an
  eighth of the generator's work of drawing each value on its own."""
  size = tf.reduce_prod(shape)
  words = tf.random.stateless_uniform([(size + 7) // 8], seed,
                                      dtype=tf.uint64, minval=None,
                                      maxval=None)
  return tf.reshape(tf.reshape(tf.bitcast(words, tf.uint8), [-1])[:size],
                    shape)


def random_erase(images, seed, probability: float):
  """Random erasing (arXiv 1708.04896) of a batch, vectorised: in each image,
  with `probability`, one rectangle of 2-33% of the area and aspect ratio
  0.3-3.3 becomes uniform noise (of 256 levels over the pixel range: uint8,
  or [-1, 1] for floats). Whole-batch ops, since per-image ones would cost
  the input pipeline a good part of a small model's step time; on uint8
  batches, a quarter of the bytes of float ones."""
  apply_seed, area_seed, ratio_seed, top_seed, left_seed, noise_seed = (
      tf.unstack(tf.random.experimental.stateless_split(seed, 6)))
  batch = tf.shape(images)[0]
  height, width = images.shape[1], images.shape[2]

  def uniform(seed, low=0.0, high=1.0):
    return tf.random.stateless_uniform([batch, 1], seed, low, high)

  area = height * width * uniform(area_seed, 0.02, 1 / 3)
  ratio = tf.exp(uniform(ratio_seed, math.log(0.3), math.log(1 / 0.3)))
  erase_h = tf.clip_by_value(tf.round(tf.sqrt(area * ratio)), 1, height)
  erase_w = tf.clip_by_value(tf.round(tf.sqrt(area / ratio)), 1, width)
  top = tf.floor(uniform(top_seed) * (height - erase_h + 1))
  left = tf.floor(uniform(left_seed) * (width - erase_w + 1))
  # The rectangle's rows (batch, height) and columns (batch, width).
  rows = tf.range(height, dtype=tf.float32)[None]
  cols = tf.range(width, dtype=tf.float32)[None]
  in_rows = ((rows >= top) & (rows < top + erase_h) &
             (uniform(apply_seed) < probability))
  in_cols = (cols >= left) & (cols < left + erase_w)
  noise = random_bytes(tf.shape(images), noise_seed)
  if images.dtype == tf.uint8:
    # Bitwise selection by a 0/255 mask: cheaper than tf.where's broadcast.
    mask = (tf.cast(in_rows, tf.uint8)[:, :, None, None] *
            tf.cast(in_cols, tf.uint8)[:, None, :, None] * 255)
    mask = tf.broadcast_to(mask, tf.shape(images))
    return tf.bitwise.bitwise_or(
        tf.bitwise.bitwise_and(noise, mask),
        tf.bitwise.bitwise_and(images, tf.bitwise.invert(mask)))
  inside = in_rows[:, :, None, None] & in_cols[:, None, :, None]
  return tf.where(inside, tf.cast(noise, images.dtype) / 127.5 - 1.0, images)


def to_uint8(images):
  """uint8 images as they are; floats in [-1, 1] back to 0-255, rounded."""
  if images.dtype == tf.uint8:
    return images
  return tf.cast(tf.round(tf.clip_by_value(images * 127.5 + 127.5, 0, 255)),
                 tf.uint8)


def auto_augment_of(pp) -> Optional[Any]:
  """`images, seed -> images` of `pp.randaugment` (num_ops, magnitude) or
  `pp.trivial_augment`, or None when both are off; checks them now."""
  settings = tuple(pp.get('randaugment', ()) or ())
  trivial = bool(pp.get('trivial_augment', False))
  fill = pp.get('augment_fill', 128)
  if settings and trivial:
    raise errors.ConfigError(
        f'pp.randaugment={settings} and pp.trivial_augment=True are two '
        'automatic augmentations; choose one (set pp.randaugment=() or '
        'pp.trivial_augment=False).')
  if trivial:
    return functools.partial(randaugment.trivial_augment_wide, fill=fill)
  if not settings:
    return None
  if len(settings) != 2:
    raise errors.ConfigError(
        f'pp.randaugment={settings} must be (num_ops, magnitude), e.g. '
        '(2, 9) as timm and big_vision use, or () to turn it off.')
  num_ops, magnitude = settings
  randaugment.check_randaugment(num_ops, magnitude)
  return functools.partial(randaugment.randaugment, num_ops=num_ops,
                           magnitude=magnitude, fill=fill)


def random_flip(images, seed):
  """Mirrors each image of a batch left-right with probability 1/2."""
  flip = tf.random.stateless_uniform([tf.shape(images)[0]], seed) < 0.5
  return tf.where(tf.reshape(flip, [-1, 1, 1, 1]),
                  tf.reverse(images, axis=[2]), images)


def preprocess_train(image, seed, size: int, augment: str):
  """Augments one decoded image with stateless randomness keyed by `seed`."""
  crop_seed, flip_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 2))
  if augment == 'inception_crop_flip':
    channels = image.shape[-1]
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([0, 0, 4], tf.float32), seed=crop_seed,
        area_range=(0.05, 1.0), aspect_ratio_range=(3 / 4, 4 / 3),
        min_object_covered=0.0, use_image_if_no_bounding_boxes=True)
    image = tf.slice(image, begin, crop_size)
    image.set_shape([None, None, channels])
  image = _to_rgb_float(image, size)
  if augment in ('pad_crop_flip', 'pad_crop'):
    pad = max(size // 8, 1)  # 4 px at 32 px, as for CIFAR.
    image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]],
                   constant_values=-1.0)
    image = tf.image.stateless_random_crop(image, (size, size, 3),
                                           seed=crop_seed)
  if augment in ('inception_crop_flip', 'pad_crop_flip', 'flip'):
    image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
  return image


def preprocess_eval(image, size: int, crop_fraction: float = 1.0):
  """Deterministic: resize (and optionally take a central crop)."""
  if crop_fraction < 1.0:
    image = _to_rgb_float(image, int(round(size / crop_fraction)))
    return tf.image.resize_with_crop_or_pad(image, size, size)
  return _to_rgb_float(image, size)


# The pipeline.


class Pipeline:
  """Training and evaluation batches of one process, as numpy dicts."""

  def __init__(self, config, process_index: int = 0, process_count: int = 1,
               source: Optional[sources.Source] = None):
    self.config = config
    self.process_index = process_index
    self.process_count = process_count
    pp = config.pp
    self.source = source or datasets.source_of(config)
    self.num_classes = self.source.num_classes
    self.class_names = self.source.class_names
    self.augment = resolve_augment(pp.get('augment', 'auto'), config.dataset,
                                   self.source.image_shape)
    self.erase_probability = pp.get('random_erase', 0.0)
    if not 0.0 <= self.erase_probability <= 1.0:
      raise sources.DataError(
          f'pp.random_erase={self.erase_probability} is not a '
          'probability; use a value from 0 (off) to 1.')
    self.auto_augment = auto_augment_of(pp)
    if config.batch % process_count or config.batch_eval % process_count:
      raise sources.DataError(
          f'batch={config.batch} and batch_eval={config.batch_eval} must be '
          f'divisible by the number of processes ({process_count}).')
    self.local_batch = config.batch // process_count
    self.local_batch_eval = config.batch_eval // process_count
    self.train_split, self.eval_split = pp.train, pp.test
    # In-memory examples are shuffled as indices (a buffer of integers, not
    # of images) and gathered, in the same order as the examples would be.
    arrays = self.source.read_arrays(
        self.train_split, process_index, process_count, drop_remainder=True)
    if arrays is None:
      self._train_arrays = None
      self._train_ds, self.train_size = self.source.read(
          self.train_split, process_index, process_count, drop_remainder=True)
    else:  # As tensors once, not again for every phase or resume.
      self._train_arrays = tuple(tf.constant(a) for a in arrays)
      self._train_ds, self.train_size = None, len(arrays[1])
    if self.train_size == 0:
      raise sources.DataError(
          f'Split {self.train_split!r} of {config.dataset} has no '
          'examples for this process.')
    self.eval_size = self.source.num_examples(self.eval_split)
    self.steps_per_epoch = self.train_size / self.local_batch
    self.image_size = pp.crop
    self.phases = curriculum.curriculum_phases(
        pp.get('curriculum', ()), pp.get('curriculum_unit', 'steps'),
        config.total_steps, pp.crop, self.steps_per_epoch)

  def image_size_at(self, step: int) -> int:
    for phase in self.phases:
      if phase.start_step <= step < phase.end_step:
        return phase.image_size
    return self.phases[-1].image_size

  def _examples(self, start: int) -> tf.data.Dataset:
    """(index, example) of the endless shuffled stream from `start` on; for
    in-memory sources, (index, position of the example in the arrays)."""
    base = (self._train_ds if self._train_arrays is None else
            tf.data.Dataset.range(self.train_size))
    buffer = max(1, min(self.config.shuffle_buffer, self.train_size))
    seed = self.config.seed * _EPOCH_SEED_STRIDE

    def one_epoch(epoch):
      return base.shuffle(buffer, seed=seed + epoch,
                          reshuffle_each_iteration=False)

    first_epoch, offset = divmod(start, self.train_size)
    ds = tf.data.Dataset.range(first_epoch, 2**62).flat_map(one_epoch)
    return ds.skip(offset).enumerate(start=start)

  def _train_dataset(self, phase: curriculum.Phase,
                     start_step: int) -> tf.data.Dataset:
    """The batches of `phase` from `start_step` on: examples in stream order,
    augmented one by one where that is needed, then batched and finished as
    whole batches."""
    b = self.local_batch
    ds = self._examples(start_step * b).take((phase.end_step - start_step) * b)
    per_example = self._per_example_fn(phase)
    if per_example is not None:
      ds = ds.map(per_example, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(b, drop_remainder=True)
    ds = ds.map(self._per_batch_fn(phase), num_parallel_calls=tf.data.AUTOTUNE)
    return self._with_options(ds.prefetch(tf.data.AUTOTUNE))

  def _with_options(self, ds: tf.data.Dataset) -> tf.data.Dataset:
    """tf.data's autotuner off unless pp.autotune. With it on, deleting an
    iterator at the end of a train phase or an evaluation was seen to wait,
    GIL held, for the autotuner's thread to wake from its sleep (up to 60 s
    after a long phase): whole-process stalls. Off, AUTOTUNE still means a
    parallel call per core and a prefetch buffer that sizes itself."""
    options = tf.data.Options()
    options.autotune.enabled = bool(self.config.pp.get('autotune', False))
    return ds.with_options(options)

  @property
  def _augments_whole_batches(self) -> bool:
    """Nothing random per example and one image shape: then batches are
    augmented as a whole, at a third to a half of the CPU time of
    per-example calls (time a small model's step needs on a CPU)."""
    return (self.augment in ('none', 'flip') and
            self.source.image_shape is not None)

  def _seed(self, *keys) -> tf.Tensor:
    """A stateless seed of this process, folded with `keys`."""
    seed = tf.constant([self.config.seed, self.process_index], tf.int64)
    for key in keys:
      seed = tf.random.experimental.stateless_fold_in(seed, key)
    return seed

  def _gather(self, positions):
    """In-memory examples at `positions` (one or a batch of them)."""
    images, labels = self._train_arrays
    return {'image': tf.gather(images, positions),
            'label': tf.gather(labels, positions)}

  def _per_example_fn(self, phase: curriculum.Phase):
    """(index, example) -> (index, example), decoded and augmented per
    example, or None when nothing needs doing before batching."""
    in_memory = self._train_arrays is not None
    if self._augments_whole_batches:
      if in_memory:
        return None  # Gathered a batch at a time.
      encoded = self._train_ds.element_spec['image'].dtype == tf.string
      if not encoded:
        return None

      def decode(index, example):
        return index, {'image': self.source.decode(example['image']),
                       'label': example['label']}

      return decode

    def preprocess(index, example):
      if in_memory:
        example = self._gather(example)
      seed = self._seed(index)
      image = preprocess_train(self.source.decode(example['image']), seed,
                               phase.image_size, self.augment)
      return index, {'image': image, 'label': example['label']}

    return preprocess

  def _per_batch_fn(self, phase: curriculum.Phase):
    """(indices, batch) -> batch: the whole-batch steps (gather, flips,
    RandAugment, random erasing, conversion to floats), each keyed by the
    batch's first example index so that any step's batch can be made
    again."""
    whole_batches = self._augments_whole_batches
    gather = self._train_arrays is not None and whole_batches
    flip = whole_batches and self.augment == 'flip'
    # Batch-level randomness has keys of its own, apart from the examples'.
    erase_seed, flip_seed = self._seed(-1), self._seed(-2)
    auto_augment_seed = self._seed(-3)
    size, probability = phase.image_size, self.erase_probability

    def finish(indices, batch):
      if gather:
        batch = self._gather(batch)
      image = batch['image']
      key = indices[0]
      if flip:  # On uint8: a quarter of the bytes of floats.
        image = random_flip(
            image, tf.random.experimental.stateless_fold_in(flip_seed, key))
      if self.auto_augment:  # On uint8, as its ops are defined.
        image = self.auto_augment(
            to_uint8(image),
            tf.random.experimental.stateless_fold_in(auto_augment_seed, key))
      # Erased on uint8 where no resize follows (a resize would blur the
      # noise), else after the float conversion.
      erase_on_uint8 = (image.dtype == tf.uint8 and
                        image.shape[1:3] == (size, size))
      erase = functools.partial(
          random_erase,
          seed=tf.random.experimental.stateless_fold_in(erase_seed, key),
          probability=probability)
      if probability and erase_on_uint8:
        if image.shape[-1] == 1:  # Noise in every channel.
          image = tf.image.grayscale_to_rgb(image)
        image = erase(image)
      if image.dtype == tf.uint8:
        image = _to_rgb_float(image, size)
      if probability and not erase_on_uint8:
        image = erase(image)
      return {'image': image, 'label': batch['label']}

    return finish

  def train_batches(self, start_step: int = 0) -> Iterator[Dict[str, Any]]:
    """Batches for steps start_step, start_step + 1, ... up to total_steps."""
    for phase in self.phases:
      if phase.end_step <= start_step:
        continue
      logging.info('Train input: steps %d-%d at %dpx.',
                   max(start_step, phase.start_step), phase.end_step,
                   phase.image_size)
      yield from self._train_dataset(
          phase, max(start_step, phase.start_step)).as_numpy_iterator()

  def num_eval_batches(self) -> int:
    """Batches per process: enough for the largest process's part."""
    largest = max(
        sources.even_part(self.eval_size, p, self.process_count, False)[1] -
        sources.even_part(self.eval_size, p, self.process_count, False)[0]
        for p in range(self.process_count))
    return max(1, math.ceil(largest / self.local_batch_eval))

  def eval_batches(self) -> Iterator[Dict[str, Any]]:
    """The whole eval split exactly once, padded with mask=0 examples."""
    return self._eval_dataset().as_numpy_iterator()

  def _eval_dataset(self) -> tf.data.Dataset:
    ds, _ = self.source.read(self.eval_split, self.process_index,
                             self.process_count, drop_remainder=False)
    size = self.image_size
    fraction = self.config.pp.get('eval_crop_fraction', 1.0)

    def preprocess(example):
      return {'image': preprocess_eval(self.source.decode(example['image']),
                                       size, fraction),
              'label': example['label'], 'mask': tf.constant(1.0)}

    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    padding = tf.data.Dataset.from_tensors({
        'image': tf.zeros((size, size, 3), tf.float32),
        'label': tf.constant(0, tf.int64), 'mask': tf.constant(0.0)}).repeat()
    num_batches = self.num_eval_batches()
    ds = ds.concatenate(padding).take(num_batches * self.local_batch_eval)
    ds = ds.batch(self.local_batch_eval).prefetch(tf.data.AUTOTUNE)
    return self._with_options(ds)

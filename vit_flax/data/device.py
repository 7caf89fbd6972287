"""The data set on the devices (`config.data_on_device`): no host pipeline.

Small data sets (Fashion-MNIST 47 MB, CIFAR about 180 MB as uint8) fit in
device memory, while a small model's step takes a fraction of a millisecond
on a GPU: a host pipeline that decodes, augments and copies every batch
would be the bottleneck. Here the train and eval splits are placed once on
the devices as uint8, and the jitted train step gathers its batch and
augments it (`device_augment`), keyed by the train state's step:

- Each epoch is a permutation of the examples keyed by (seed, epoch),
  computed on the devices; the batch of step s holds stream positions
  s * b ... (s + 1) * b - 1 (b: the batch of a group, below). A batch is a
  pure function of (seed, step): a resumed run sees the batches an
  uninterrupted one would, and ends bit for bit equal.
- Layout: 'replicated' (every device holds the whole split; one process
  only) when the splits are small, else 'sharded': device d of D holds its
  own part of the examples, permuted and drawn on its own (b = batch / D),
  so a batch gathers no data across devices. With several processes, each
  reads only its part of the split (as the host pipeline does) and puts it
  on its devices.
- Evaluation: the whole eval split exactly once in batches of
  `batch_eval`, padded with mask=0 examples, as the host pipeline does.

The batches differ from the host pipeline's (another shuffle, other
augmentation draws), with the same distributions. `TrainData` and
`EvalData` are what the loop hands to the jitted steps in place of a batch:
the device arrays, and static fields (image size, augmentation) so that
each curriculum size compiles once.
"""

import math
import os
from typing import Any, Dict, Iterator, Optional, Tuple

from absl import logging
import flax
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from vit_flax import errors
from vit_flax.data import augmentations
from vit_flax.data import curriculum
from vit_flax.data import datasets
from vit_flax.data import device_augment
from vit_flax.data import sources
from vit_flax.training import mesh as mesh_lib

LAYOUTS = ('replicated', 'sharded')
# 'auto' puts the data on the devices when the splits take at most this
# share of one device's memory (after sharding, if they are sharded).
AUTO_MAX_MEMORY_SHARE = 0.25
# Replicated (each device holds all) when the splits take at most this share
# of one device's memory; sharded otherwise.
REPLICATED_MAX_MEMORY_SHARE = 0.1
# Folded into the seed's key: the permutations and augmentation draws have
# keys of their own, apart from init's and dropout's.
PERMUTATION_KEY = 0x7065726D
AUGMENT_KEY = 0x61756720


def device_memory_bytes() -> int:
  """Memory of one local device: its allocator's limit on accelerators,
  the host's physical memory on CPUs (whose "device" memory it is)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if 'bytes_limit' in stats:
    return int(stats['bytes_limit'])
  return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')


def split_bytes(source: sources.Source, config) -> Optional[int]:
  """Bytes of the train and eval splits as uint8, or None when the images
  have no common shape."""
  if source.image_shape is None:
    return None
  examples = (source.num_examples(config.pp.train) +
              source.num_examples(config.pp.test))
  return examples * math.prod(source.image_shape)


def check_augmentations(config, augment: Optional[str] = None) -> None:
  """ConfigError naming the settings of `config.pp` that have no device
  version, when `config.data_on_device` is True."""
  fields = augmentations.host_only(config.pp, augment)
  if fields:
    raise errors.ConfigError(
        f'config.data_on_device=True, but {", ".join(fields)} has no device '
        'version: on the devices the train step can do pp.augment in '
        f'{augmentations.DEVICE_AUGMENTATIONS} (and auto), '
        'pp.random_erase, pp.curriculum and mixup/CutMix. Set '
        'config.data_on_device=False to use the host pipeline (which needs '
        'TensorFlow), or turn those settings off.')


def use_data_on_device(config, source: sources.Source) -> bool:
  """Whether `config.data_on_device` puts this data on the devices: True,
  False, or for 'auto', whether every augmentation has a device version
  and the splits fit in AUTO_MAX_MEMORY_SHARE of a device's memory."""
  setting = config.get('data_on_device', False)
  if setting != 'auto':
    return bool(setting)
  augment = augmentations.resolve_augment(
      config.pp.get('augment', 'auto'), config.dataset, source.image_shape)
  missing = augmentations.host_only(config.pp, augment)
  size = split_bytes(source, config)
  budget = AUTO_MAX_MEMORY_SHARE * device_memory_bytes()
  on = not missing and size is not None and (
      size / jax.local_device_count() <= budget)
  logging.info(
      'data_on_device=auto: %s (%s).', 'on' if on else 'off',
      f'host-only augmentations {missing}' if missing else
      'images of different shapes' if size is None else
      f'splits of {size / 2**20:.1f} MiB against {budget / 2**20:.0f} MiB')
  return on


def choose_layout(num_bytes: int, process_count: int) -> str:
  """'replicated' for small splits of one process, else 'sharded'."""
  if process_count == 1 and (
      num_bytes <= REPLICATED_MAX_MEMORY_SHARE * device_memory_bytes()):
    return 'replicated'
  return 'sharded'


# What the jitted steps take in place of a batch.


def _static(**kwargs):
  return flax.struct.field(pytree_node=False, **kwargs)


def epochs_of_step(step: int, per_group: int, size: int) -> Tuple[int, int]:
  """(first, last) epoch that the batch of `step` draws examples from."""
  return (step * per_group) // size, ((step + 1) * per_group - 1) // size


def epoch_orders(seed: int, first_epoch: jax.Array, num_epochs: int,
                 num_groups: int, size: int) -> jax.Array:
  """(num_epochs, num_groups, size) int32: the order of each group's
  examples in epochs first_epoch, first_epoch + 1, ...: permutations keyed
  by (seed, epoch, group)."""
  key = jax.random.fold_in(jax.random.key(seed), PERMUTATION_KEY)

  def order(epoch, group):
    epoch_key = jax.random.fold_in(jax.random.fold_in(key, epoch), group)
    return jax.random.permutation(epoch_key, size).astype(jnp.int32)

  epochs = first_epoch + jnp.arange(num_epochs, dtype=jnp.int32)
  groups = jnp.arange(num_groups, dtype=jnp.int32)
  return jax.vmap(lambda e: jax.vmap(lambda g: order(e, g))(groups))(epochs)


@flax.struct.dataclass
class TrainData:
  """The train split on the devices and how a step's batch is made of it.

  `images` (G, n, h, w, c) uint8 and `labels` (G, n) int32: G groups
  (1 when replicated, every device when sharded) of n examples each. Group
  g's part of a step's batch comes from its own examples only, in the
  order of `orders` (epoch_orders of epochs first_epoch, ...; computed
  once per epoch, not per step: a sort of n keys costs more than a small
  model's step on a CPU).
  """
  images: jax.Array
  labels: jax.Array
  orders: jax.Array
  first_epoch: Any  # int32 scalar: the epoch of orders[0].
  seed: int = _static()
  batch: int = _static()  # Global: every group's part together.
  image_size: int = _static()  # This phase's (resolution curricula).
  augment: str = _static()
  erase_probability: float = _static()
  batch_sharding: Any = _static()

  def indices_at(self, step: jax.Array) -> jax.Array:
    """(G, batch / G) int32: each group's examples in the batch of `step`
    (whose epochs `orders` must hold)."""
    groups, size = self.labels.shape
    per_group = self.batch // groups
    # Stream position step * per_group, as epoch * size + offset without
    # overflowing int32 (for size * per_group < 2**31): step = laps * size +
    # rest.
    step = jnp.asarray(step, jnp.int32)
    laps, rest = jnp.divmod(step, size)
    epoch, offset = jnp.divmod(rest * per_group, size)
    epoch += laps * per_group - self.first_epoch
    positions = offset + jnp.arange(per_group, dtype=jnp.int32)
    orders = jnp.swapaxes(self.orders, 0, 1)  # (G, epochs, n)
    return jax.vmap(lambda o: o[epoch + positions // size, positions % size])(
        orders)

  def batch_at(self, step: jax.Array) -> Dict[str, jax.Array]:
    """{'image': float32 (batch, size, size, 3), 'label'} of `step`,
    gathered and augmented on the devices."""
    indices = self.indices_at(step)
    gather = jax.vmap(lambda x, i: x[i])
    images = gather(self.images, indices)
    labels = gather(self.labels, indices)
    images = images.reshape((self.batch,) + images.shape[2:])
    labels = labels.reshape((self.batch,))
    constrain = lambda x: jax.lax.with_sharding_constraint(
        x, self.batch_sharding)
    images, labels = constrain(images), constrain(labels)
    rng = jax.random.fold_in(
        jax.random.fold_in(jax.random.key(self.seed), AUGMENT_KEY), step)
    images = device_augment.augment_batch(rng, images, self.image_size,
                                          self.augment,
                                          self.erase_probability)
    return {'image': constrain(images), 'label': labels}


@flax.struct.dataclass
class EvalData:
  """The eval split on the devices, and which of its batches to take.

  `images` (G, m, h, w, c), `labels` and `mask` (G, m): each group's part
  padded with mask=0 examples to a whole number of batches; batch i holds
  rows i * m_b ... (i + 1) * m_b - 1 of every group (m_b = batch / G).
  """
  images: jax.Array
  labels: jax.Array
  mask: jax.Array
  index: Any  # int32 scalar of the batch: not static, compiled once.
  batch: int = _static()
  image_size: int = _static()
  crop_fraction: float = _static()
  batch_sharding: Any = _static()

  def materialize(self) -> Dict[str, jax.Array]:
    """{'image', 'label', 'mask'} of batch `index`, as the host pipeline's
    `eval_batches` yields it."""
    per_group = self.batch // self.labels.shape[0]
    start = self.index * per_group

    def rows(x):
      x = jax.lax.dynamic_slice_in_dim(x, start, per_group, axis=1)
      return jax.lax.with_sharding_constraint(
          x.reshape((self.batch,) + x.shape[2:]), self.batch_sharding)

    images = device_augment.preprocess_eval(rows(self.images),
                                            self.image_size,
                                            self.crop_fraction)
    return {'image': jax.lax.with_sharding_constraint(images,
                                                      self.batch_sharding),
            'label': rows(self.labels), 'mask': rows(self.mask)}


# Placement.


def _groups(images: np.ndarray, labels: np.ndarray, num_groups: int,
            drop_remainder: bool, length: Optional[int] = None):
  """(images, labels, mask) split into `num_groups` near-equal parts
  stacked on a new leading axis; parts padded with mask=0 zeros to
  `length` (or dropped to the shortest part's length)."""
  parts = [sources.even_part(len(labels), g, num_groups, drop_remainder)
           for g in range(num_groups)]
  if length is None:
    length = max(end - start for start, end in parts)
  out_images = np.zeros((num_groups, length) + images.shape[1:], np.uint8)
  out_labels = np.zeros((num_groups, length), np.int32)
  mask = np.zeros((num_groups, length), np.float32)
  for g, (start, end) in enumerate(parts):
    end = min(end, start + length)
    out_images[g, :end - start] = images[start:end]
    out_labels[g, :end - start] = labels[start:end]
    mask[g, :end - start] = 1.0
  return out_images, out_labels, mask


class DevicePipeline:
  """Training and evaluation data on the devices, in place of the host
  pipeline (`pipeline.Pipeline`) and with what the loop uses of it."""

  on_device = True

  def __init__(self, config, mesh: Mesh,
               source: Optional[sources.Source] = None,
               process_index: Optional[int] = None,
               process_count: Optional[int] = None,
               layout: Optional[str] = None):
    self.config = config
    pp = config.pp
    self.process_index = (jax.process_index() if process_index is None
                          else process_index)
    self.process_count = (jax.process_count() if process_count is None
                          else process_count)
    self.source = source or datasets.source_of(config)
    self.num_classes = self.source.num_classes
    self.class_names = self.source.class_names
    self.augment = augmentations.resolve_augment(
        pp.get('augment', 'auto'), config.dataset, self.source.image_shape)
    check_augmentations(config, self.augment)
    self.erase_probability = pp.get('random_erase', 0.0)
    if not 0.0 <= self.erase_probability <= 1.0:
      raise sources.DataError(
          f'pp.random_erase={self.erase_probability} is not a '
          'probability; use a value from 0 (off) to 1.')
    if (config.batch % self.process_count or
        config.batch_eval % self.process_count):
      raise sources.DataError(
          f'batch={config.batch} and batch_eval={config.batch_eval} must be '
          f'divisible by the number of processes ({self.process_count}).')
    self.local_batch = config.batch // self.process_count
    self.local_batch_eval = config.batch_eval // self.process_count
    self.train_split, self.eval_split = pp.train, pp.test
    self.image_size = pp.crop

    train = self.source.load_arrays(self.train_split, self.process_index,
                                    self.process_count, drop_remainder=True)
    evaluation = self.source.load_arrays(
        self.eval_split, self.process_index, self.process_count,
        drop_remainder=False)
    self.train_size = len(train[1])
    if self.train_size == 0:
      raise sources.DataError(
          f'Split {self.train_split!r} of {config.dataset} has no '
          'examples for this process.')
    self.eval_size = self.source.num_examples(self.eval_split)
    self.steps_per_epoch = self.train_size / self.local_batch
    self.phases = curriculum.curriculum_phases(
        pp.get('curriculum', ()), pp.get('curriculum_unit', 'steps'),
        config.total_steps, pp.crop, self.steps_per_epoch)

    num_bytes = ((train[0].nbytes + evaluation[0].nbytes) *
                 self.process_count)
    self.layout = layout or choose_layout(num_bytes, self.process_count)
    if self.layout not in LAYOUTS:
      raise ValueError(f'layout={self.layout!r}; expected one of {LAYOUTS}.')
    self.mesh = mesh
    self.batch_sharding = mesh_lib.batch_sharding(mesh)
    if self.layout == 'replicated':
      if self.process_count > 1:
        raise ValueError('A replicated layout needs a single process.')
      self.num_groups, sharding = 1, NamedSharding(mesh, P())
    else:
      self.num_groups, sharding = mesh.devices.size, self.batch_sharding
    local_groups = self.num_groups // self.process_count
    if self.train_size < local_groups:
      raise sources.DataError(
          f'Split {self.train_split!r} of {config.dataset} has '
          f'{self.train_size} examples for this process, fewer than its '
          f'{local_groups} devices.')
    self._sharding = sharding
    self._first_eval_images = evaluation[0][:1]
    self._train = self._place(
        _groups(*train, local_groups, drop_remainder=True)[:2])
    self.num_eval_batches = self._count_eval_batches(local_groups)
    per_group_eval = config.batch_eval // self.num_groups
    self._eval = self._place(_groups(
        *evaluation, local_groups, drop_remainder=False,
        length=self.num_eval_batches * per_group_eval))
    dropped = self.train_size - local_groups * self._train[1].shape[1]
    logging.info(
        'Data on the devices (%s): %d train examples in %d group(s)%s, '
        '%d eval examples; %.1f MiB per device.', self.layout,
        self.train_size - dropped, self.num_groups,
        f' ({dropped} left out to split evenly)' if dropped else '',
        len(evaluation[1]), self.bytes_per_device() / 2**20)

  def _place(self, arrays):
    """This process's groups -> global arrays laid out as `self.layout`."""
    return tuple(jax.make_array_from_process_local_data(self._sharding, x)
                 for x in arrays)

  def _count_eval_batches(self, local_groups: int) -> int:
    """Batches for the largest group of any process (all run the same)."""
    largest = 0
    for p in range(self.process_count):
      start, end = sources.even_part(self.eval_size, p, self.process_count,
                                     False)
      largest = max(largest, math.ceil((end - start) / local_groups))
    per_group = self.config.batch_eval // self.num_groups
    return max(1, math.ceil(largest / per_group))

  def bytes_per_device(self) -> int:
    device = jax.local_devices()[0]
    return sum(shard.data.nbytes for x in self._train + self._eval
               for shard in x.addressable_shards if shard.device == device)

  def image_size_at(self, step: int) -> int:
    for phase in self.phases:
      if phase.start_step <= step < phase.end_step:
        return phase.image_size
    return self.phases[-1].image_size

  def _epochs_window(self, step: int, window=None):
    """(first epoch, its orders, first epoch on the devices): `window` when
    its epochs hold the batch of `step`, else the epochs from the batch's
    first on, computed on the devices (laid out as the examples)."""
    _, size = self._train[1].shape
    per_group = self.config.batch // self.num_groups
    num_epochs = (per_group - 1) // size + 2
    first, last = epochs_of_step(step, per_group, size)
    if window is not None and window[0] <= first and (
        last < window[0] + num_epochs):
      return window
    if self.layout == 'replicated':
      sharding = NamedSharding(self.mesh, P())
    else:
      sharding = NamedSharding(self.mesh, P(None, *self.batch_sharding.spec))
    # From host scalars, which every process gives alike; placed once, not
    # transferred at every step.
    orders = jax.jit(epoch_orders, static_argnums=(0, 2, 3, 4),
                     out_shardings=sharding)(
                         self.config.seed, np.int32(first), num_epochs,
                         self.num_groups, size)
    return first, orders, jax.device_put(np.int32(first),
                                         NamedSharding(self.mesh, P()))

  def train_data(self, step: int, image_size: int,
                 window=None) -> Tuple[TrainData, Any]:
    """(what the train step takes at `step`, the epochs' window): the
    arrays, the orders of the epochs the step reaches into (`window`'s
    when they hold them) and the phase's image size."""
    window = self._epochs_window(step, window)
    images, labels = self._train
    return TrainData(
        images=images, labels=labels, orders=window[1],
        first_epoch=window[2], seed=self.config.seed,
        batch=self.config.batch, image_size=image_size,
        augment=self.augment, erase_probability=self.erase_probability,
        batch_sharding=self.batch_sharding), window

  def train_batches(self, start_step: int = 0) -> Iterator[TrainData]:
    """What the train step takes for steps start_step, start_step + 1, ...
    up to total_steps: the same arrays, the orders of the epochs each step
    reaches into, and each phase's image size."""
    window = None
    for phase in self.phases:
      if phase.end_step <= start_step:
        continue
      logging.info('Train input (on the devices): steps %d-%d at %dpx.',
                   max(start_step, phase.start_step), phase.end_step,
                   phase.image_size)
      for step in range(max(start_step, phase.start_step), phase.end_step):
        data, window = self.train_data(step, phase.image_size, window)
        yield data

  def eval_batches(self) -> Iterator[EvalData]:
    """The whole eval split exactly once, padded with mask=0 examples."""
    images, labels, mask = self._eval
    for index in range(self.num_eval_batches):
      yield EvalData(
          images=images, labels=labels, mask=mask,
          index=np.int32(index), batch=self.config.batch_eval,
          image_size=self.image_size,
          crop_fraction=self.config.pp.get('eval_crop_fraction', 1.0),
          batch_sharding=self.batch_sharding)

  def first_eval_images(self) -> np.ndarray:
    """This process's first eval image, preprocessed, as a batch of one
    (for figures; computed here, with no other process)."""
    return np.asarray(device_augment.preprocess_eval(
        jnp.asarray(self._first_eval_images), self.image_size,
        self.config.pp.get('eval_crop_fraction', 1.0)))

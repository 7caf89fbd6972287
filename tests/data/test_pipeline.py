"""Tests of vit_flax.data's sources and host pipeline, on mock TFDS data and
data the tests write."""

import gzip
import os
import re

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from vit_flax import errors
from vit_flax.configs import common
from vit_flax.data import curriculum as curriculum_lib
from vit_flax.data import datasets
from vit_flax.data import idx
from vit_flax.data import pipeline as pipeline_lib
from vit_flax.data import sources

from helpers import write_idx


def data_config(dataset='cifar10', **pp):
  config = common.get_config()
  config.dataset = dataset
  config.batch = 8
  config.batch_eval = 6
  config.total_steps = 6
  config.shuffle_buffer = 100
  config.pp.crop = 32
  config.pp.update(pp)
  return config


def stack(batches):
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def test_batches_are_a_function_of_seed_and_step():
  with tfds.testing.mock_data(num_examples=20):
    pipeline = pipeline_lib.Pipeline(data_config())
    first = list(pipeline.train_batches(0))
    again = list(pipeline_lib.Pipeline(data_config()).train_batches(0))
    resumed = list(pipeline.train_batches(4))
  assert len(first) == 6 and len(resumed) == 2
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a['image'], b['image'])
  for a, b in zip(first[4:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  images = stack(first)['image']
  assert images.shape == (48, 32, 32, 3) and images.dtype == np.float32
  assert images.min() >= -1.0 and images.max() <= 1.0


@pytest.mark.parametrize('autotune', [False, True])
def test_tf_data_autotuner_follows_the_config(autotune):
  with tfds.testing.mock_data(num_examples=20):
    pipeline = pipeline_lib.Pipeline(data_config(autotune=autotune))
    datasets = (pipeline._train_dataset(pipeline.phases[0], 0),
                pipeline._eval_dataset())
  for ds in datasets:
    assert ds.options().autotune.enabled is autotune


def test_each_epoch_is_a_new_permutation_of_the_split():
  images = np.arange(16, dtype=np.uint8).reshape(16, 1, 1, 1) * np.ones(
      (1, 4, 4, 1), np.uint8)
  source = sources.ArraySource('toy', {
      'train': (images, np.arange(16)),
      'test': (images, np.arange(16))
  },
                               class_names=[str(i) for i in range(16)])
  config = data_config(crop=4, augment='none')
  config.batch, config.total_steps = 4, 8  # two epochs
  pipeline = pipeline_lib.Pipeline(config, source=source)
  labels = stack(list(pipeline.train_batches(0)))['label']
  assert sorted(labels[:16]) == list(range(16))
  assert sorted(labels[16:]) == list(range(16))
  assert list(labels[:16]) != list(labels[16:])


class StreamedArraySource(sources.ArraySource):
  """The same examples, only offered as a tf.data stream."""

  def read_arrays(self, *args, **kwargs):
    return None


@pytest.mark.parametrize('augment,erase', [('flip', 0.5), ('none', 0.0),
                                           ('pad_crop_flip', 0.5)])
def test_in_memory_examples_read_by_index_match_the_streamed_ones(augment,
                                                                  erase):
  rng = np.random.RandomState(1)
  arrays = {'train': (rng.randint(0, 256, (40, 8, 8, 1)).astype(np.uint8),
                      rng.randint(0, 10, 40)),
            'test': (np.zeros((4, 8, 8, 1), np.uint8), np.zeros(4, int))}
  config = data_config(crop=8, augment=augment, random_erase=erase)
  config.batch, config.total_steps, config.shuffle_buffer = 12, 8, 16
  batches = {}
  for cls in (sources.ArraySource, StreamedArraySource):
    source = cls('toy', arrays, class_names=list('abcdefghij'),
                 image_shape=(8, 8, 1))
    batches[cls] = list(pipeline_lib.Pipeline(
        config, source=source).train_batches(start_step=2))
  assert len(batches[StreamedArraySource]) == 6  # Over 2+ epochs.
  for a, b in zip(batches[sources.ArraySource],
                  batches[StreamedArraySource]):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])


def test_processes_read_disjoint_parts():
  images = np.zeros((10, 2, 2, 1), np.uint8)
  source = sources.ArraySource('toy', {
      'train': (images, np.arange(10)),
      'test': (images, np.arange(10))
  },
                               class_names=list('abcdefghij'))
  seen_train, seen_test = [], []
  for index in range(3):
    train_ds, train_n = source.read('train', index, 3, drop_remainder=True)
    test_ds, test_n = source.read('test', index, 3, drop_remainder=False)
    assert train_n == 3
    seen_train += [int(x['label']) for x in train_ds]
    seen_test += [int(x['label']) for x in test_ds]
  assert len(set(seen_train)) == 9  # one example dropped, none repeated
  assert sorted(seen_test) == list(range(10))  # eval: all, exactly once


def test_eval_covers_the_split_exactly_once_with_padding():
  with tfds.testing.mock_data(num_examples=20):
    pipeline = pipeline_lib.Pipeline(data_config())
    batches = list(pipeline.eval_batches())
  assert len(batches) == pipeline.num_eval_batches() == 4  # ceil(20 / 6)
  masks = stack(batches)['mask']
  assert masks.sum() == pipeline.eval_size == 20
  assert list(masks[20:]) == [0.0] * 4


def test_curriculum_switches_sizes_at_the_given_steps():
  with tfds.testing.mock_data(num_examples=20):
    pipeline = pipeline_lib.Pipeline(
        data_config(curriculum=((0, 16), (2, 24), (5, 32))))
    sizes = [b['image'].shape[1] for b in pipeline.train_batches(0)]
    resumed = [b['image'].shape[1] for b in pipeline.train_batches(3)]
  assert sizes == [16, 16, 24, 24, 24, 32]
  assert resumed == [24, 24, 32]
  assert [pipeline.image_size_at(s) for s in range(6)] == sizes


def test_curriculum_in_epochs():
  phases = curriculum_lib.curriculum_phases(
      ((0, 32), (2, 64)), 'epochs', total_steps=100, final_size=64,
      steps_per_epoch=10.5)
  assert phases == [curriculum_lib.Phase(0, 21, 32),
                    curriculum_lib.Phase(21, 100, 64)]


@pytest.mark.parametrize('curriculum', [((1, 16),), ((0, 16), (0, 32))])
def test_bad_curriculum_is_a_clear_error(curriculum):
  with pytest.raises(sources.DataError, match='must start at 0'):
    curriculum_lib.curriculum_phases(curriculum, 'steps', 10, 32, 1.0)


@pytest.mark.parametrize('dataset,shape,expected', [
    ('mnist', (28, 28, 1), 'none'),
    ('cifar10', (32, 32, 3), 'pad_crop_flip'),
    ('imagenet2012', None, 'inception_crop_flip'),
])
def test_auto_augmentation_fits_the_data(dataset, shape, expected):
  assert pipeline_lib.resolve_augment('auto', dataset, shape) == expected


def test_augmentations_keep_shape_and_range():
  image = tf.constant(np.random.RandomState(0).randint(
      0, 256, (40, 50, 1)).astype(np.uint8))
  seed = tf.constant([1, 2], tf.int64)
  for augment in ('inception_crop_flip', 'pad_crop_flip', 'pad_crop', 'flip',
                  'none'):
    out = pipeline_lib.preprocess_train(image, seed, 24, augment).numpy()
    assert out.shape == (24, 24, 3), augment
    assert out.min() >= -1.0 and out.max() <= 1.0
    again = pipeline_lib.preprocess_train(image, seed, 24, augment).numpy()
    np.testing.assert_array_equal(out, again)  # stateless: same seed, same out
  # Grayscale becomes three equal channels.
  assert np.all(out[..., 0] == out[..., 2])


def test_flip_mirrors_or_keeps_the_image():
  image = np.random.RandomState(1).randint(0, 256, (8, 8, 1)).astype(np.uint8)
  plain = pipeline_lib.preprocess_train(image, tf.constant([0, 0], tf.int64), 8,
                                        'none').numpy()
  outs = [pipeline_lib.preprocess_train(
      image, tf.constant([i, 0], tf.int64), 8, 'flip').numpy()
          for i in range(16)]
  flipped = [np.array_equal(out, plain[:, ::-1]) for out in outs]
  assert all(f or np.array_equal(out, plain) for f, out in zip(flipped, outs))
  assert 0 < sum(flipped) < len(outs)  # Both happen.


def test_flips_on_whole_batches_mirror_about_half_and_resume_exactly():
  # Fashion-MNIST (one image shape) with 'flip' augments whole batches.
  config = data_config('fashion_mnist', crop=28, augment='flip')
  flipped = list(pipeline_lib.Pipeline(config).train_batches())
  resumed = list(pipeline_lib.Pipeline(config).train_batches(start_step=4))
  for a, b in zip(flipped[4:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
  config.pp.augment = 'none'
  plain = stack(list(pipeline_lib.Pipeline(config).train_batches()))
  flipped = stack(flipped)
  np.testing.assert_array_equal(flipped['label'], plain['label'])
  mirrored = [np.array_equal(f, p[:, ::-1])
              for f, p in zip(flipped['image'], plain['image'])]
  kept = [np.array_equal(f, p)
          for f, p in zip(flipped['image'], plain['image'])]
  assert all(m or k for m, k in zip(mirrored, kept))
  assert 0.25 < np.mean(mirrored) < 0.75  # 48 images, each with p = 1/2.


def test_random_erase_replaces_one_rectangle_with_noise():
  images = tf.fill((64, 20, 20, 3), 0.25)
  seed = tf.constant([3, 4], tf.int64)
  out = pipeline_lib.random_erase(images, seed, 0.5).numpy()
  np.testing.assert_array_equal(
      out, pipeline_lib.random_erase(images, seed, 0.5))  # Stateless.
  assert out.min() >= -1.0 and out.max() <= 1.0
  erased = 0
  for image in out:
    changed = np.any(image != 0.25, axis=-1)
    if not changed.any():
      continue
    erased += 1
    rows, cols = np.nonzero(changed)
    box = changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    # One rectangle (a noise pixel may equal 0.25, hardly), of 2-33% of the
    # area, rounded to whole pixels.
    assert box.mean() > 0.95, box
    assert 0.02 * 400 - 8 <= box.size <= 400 / 3 + 20, box.shape
  assert 16 <= erased <= 48  # About half of the 64 images.
  assert not np.any(pipeline_lib.random_erase(images, seed, 0.0) != 0.25)


def test_random_erase_on_uint8_matches_erasing_after_the_float_conversion():
  images = tf.constant(np.random.RandomState(0).randint(
      0, 256, (32, 12, 12, 3)).astype(np.uint8))
  seed = tf.constant([5, 6], tf.int64)
  on_uint8 = pipeline_lib.random_erase(images, seed, 0.5)
  assert on_uint8.dtype == tf.uint8
  as_float = pipeline_lib._to_rgb_float(images, 12)
  np.testing.assert_array_equal(
      pipeline_lib._to_rgb_float(on_uint8, 12),
      pipeline_lib.random_erase(as_float, seed, 0.5))
  erased = np.any(on_uint8.numpy() != images.numpy(), axis=(1, 2, 3))
  assert 0.2 < erased.mean() < 0.8


def test_random_erase_in_the_pipeline_is_a_function_of_seed_and_step():
  config = data_config('fashion_mnist', crop=28, augment='none',
                       random_erase=0.5)
  first = list(pipeline_lib.Pipeline(config).train_batches())
  resumed = list(pipeline_lib.Pipeline(config).train_batches(start_step=4))
  for a, b in zip(first[4:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
  config.pp.random_erase = 0.0
  plain = list(pipeline_lib.Pipeline(config).train_batches())
  differs = [np.any(a['image'] != b['image'], axis=(1, 2, 3))
             for a, b in zip(first, plain)]
  assert 0.2 < np.mean(differs) < 0.8
  np.testing.assert_array_equal(first[0]['label'], plain[0]['label'])


def test_random_erase_must_be_a_probability():
  with pytest.raises(sources.DataError,
                     match='pp.random_erase=1.5 is not a probability'):
    pipeline_lib.Pipeline(data_config('fashion_mnist', random_erase=1.5))


def test_eval_central_crop():
  image = tf.zeros((64, 64, 3), tf.uint8)
  assert pipeline_lib.preprocess_eval(image, 32, 0.875).shape == (32, 32, 3)


# Offline Fashion-MNIST.


def test_fashion_mnist_offline_matches_tfds_format():
  config = data_config('fashion_mnist', crop=28)
  pipeline = pipeline_lib.Pipeline(config)
  assert isinstance(pipeline.source, sources.ArraySource)
  assert (pipeline.train_size, pipeline.eval_size) == (60_000, 10_000)
  with tfds.testing.mock_data(num_examples=4):
    builder = tfds.builder('fashion_mnist')
    spec = builder.as_dataset(split='train').element_spec
  assert pipeline.class_names == builder.info.features['label'].names
  assert pipeline.num_classes == 10
  ds, _ = pipeline.source.read('test', 0, 1, drop_remainder=False)
  example = next(iter(ds))
  assert example['image'].shape == spec['image'].shape == (28, 28, 1)
  assert example['image'].dtype == spec['image'].dtype == tf.uint8
  assert example['label'].dtype == spec['label'].dtype == tf.int64
  labels = np.array([int(e['label']) for e in ds])
  assert np.bincount(labels).tolist() == [1000] * 10


def test_read_idx_round_trip_and_corrupt_file(tmp_path):
  array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
  write_idx(tmp_path / 'ok.gz', array)
  np.testing.assert_array_equal(
      idx.read_idx(str(tmp_path / 'ok.gz')), array)
  with gzip.open(tmp_path / 'cut.gz', 'wb') as f:
    f.write(bytes([0, 0, 8, 1]) + (100).to_bytes(4, 'big') + b'\x00' * 10)
  with pytest.raises(sources.DataError, match='truncated'):
    idx.read_idx(str(tmp_path / 'cut.gz'))


def test_fashion_mnist_from_a_manual_dir(tmp_path):
  for split, (images, labels) in idx.FASHION_MNIST_FILES.items():
    n = 6 if split == 'train' else 4
    write_idx(tmp_path / images, np.full((n, 28, 28), 7))
    write_idx(tmp_path / labels, np.arange(n) % 10)
  source = datasets.get_source('fashion_mnist', manual_dir=str(tmp_path))
  assert source.num_examples('train') == 6
  assert source.num_examples('test') == 4
  assert source.num_examples('train[:50%]') == 3


# Image folders and bad input.


def write_folder(root, classes=('cat', 'dog'), per_class=3):
  for split in ('train', 'test'):
    for i, name in enumerate(classes):
      os.makedirs(root / split / name)
      for j in range(per_class):
        pixels = np.full((20, 30, 3), 40 * i + j, np.uint8)
        Image.fromarray(pixels).save(root / split / name / f'{j}.png')


def test_image_folder_dataset(tmp_path):
  write_folder(tmp_path)
  config = data_config(str(tmp_path), crop=16)
  config.batch, config.batch_eval, config.total_steps = 2, 4, 3
  pipeline = pipeline_lib.Pipeline(config)
  assert pipeline.class_names == ['cat', 'dog']
  assert (pipeline.train_size, pipeline.eval_size) == (6, 6)
  assert pipeline.augment == 'inception_crop_flip'  # sizes unknown upfront
  batch = next(pipeline.train_batches(0))
  assert batch['image'].shape == (2, 16, 16, 3)
  evaluated = stack(list(pipeline.eval_batches()))
  assert evaluated['mask'].sum() == 6
  assert sorted(evaluated['label'][evaluated['mask'] > 0]) == [0] * 3 + [1] * 3


def test_image_folder_errors(tmp_path):
  with pytest.raises(sources.DataError, match='no train/ subfolder'):
    datasets.get_source(str(tmp_path))
  layout = re.escape('/{train,test}/<class_name>/<image files> (.jpg')
  (tmp_path / 'empty' / 'train').mkdir(parents=True)
  with pytest.raises(sources.DataError, match=r'train has no class '
                     r'subfolders; the layout is .*' + layout):
    datasets.get_source(str(tmp_path / 'empty'))
  (tmp_path / 'empty' / 'train' / 'cat').mkdir()
  (tmp_path / 'empty' / 'train' / 'dog').mkdir()
  (tmp_path / 'empty' / 'train' / 'dog' / 'notes.txt').write_text('')
  with pytest.raises(sources.DataError,
                     match=r'class folders of .*train hold no image files; the '
                     r'layout is .*' + layout):
    datasets.get_source(str(tmp_path / 'empty'))
  # One class trains to loss 0 whatever the images: refused before work.
  write_folder(tmp_path / 'one', classes=('cat',))
  config = data_config(str(tmp_path / 'one'), crop=16)
  with pytest.raises(sources.DataError,
                     match=r"holds one class \('cat'\): a classifier needs at "
                     'least two'):
    pipeline_lib.Pipeline(config)
  write_folder(tmp_path / 'data')
  source = datasets.get_source(str(tmp_path / 'data'))
  with pytest.raises(sources.DataError, match="Unknown split 'val'"):
    source.num_examples('val')


def test_unknown_dataset_is_a_clear_error():
  with pytest.raises(sources.DataError,
                     match="Unknown dataset 'cifar11'.*TFDS name"):
    datasets.get_source('cifar11')


def test_unknown_split_is_a_clear_error():
  with pytest.raises(sources.DataError,
                     match="Unknown split 'valid'.*'test', 'train'"):
    pipeline_lib.Pipeline(data_config('fashion_mnist', test='valid'))


def test_unknown_augmentation_is_a_clear_error():
  with pytest.raises(sources.DataError, match="augmentation 'big'"):
    pipeline_lib.resolve_augment('big', 'cifar10', None)


@pytest.mark.parametrize('pp', [dict(randaugment=(2, 9)),
                                dict(trivial_augment=True),
                                dict(randaugment=(2, 9), augment='none')])
def test_auto_augment_is_a_function_of_seed_and_step(pp):
  with tfds.testing.mock_data(num_examples=20):
    plain = list(pipeline_lib.Pipeline(
        data_config(**{k: v for k, v in pp.items() if k == 'augment'})
    ).train_batches(0))
    pipeline = pipeline_lib.Pipeline(data_config(**pp))
    first = list(pipeline.train_batches(0))
    resumed = list(pipeline.train_batches(3))
  for a, b in zip(first[3:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
  assert any(not np.array_equal(a['image'], b['image'])
             for a, b in zip(plain, first))
  images = stack(first)['image']
  assert images.dtype == np.float32 and images.shape == (48, 32, 32, 3)
  assert images.min() >= -1.0 and images.max() <= 1.0


def test_auto_augment_settings_are_checked_at_once():
  with pytest.raises(errors.ConfigError, match='choose one'):
    pipeline_lib.auto_augment_of(
        data_config(randaugment=(2, 9), trivial_augment=True).pp)
  with pytest.raises(errors.ConfigError, match='num_ops=0'):
    pipeline_lib.auto_augment_of(data_config(randaugment=(0, 9)).pp)

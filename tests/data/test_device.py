"""Tests of the data on the devices (config.data_on_device): the jnp
augmentations, batches as a function of (seed, step), placement, evaluation,
config errors, and training without TensorFlow."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from vit_flax import errors
from vit_flax.configs import common
from vit_flax.data import device
from vit_flax.data import device_augment
from vit_flax.data import sources
from vit_flax.training import config_checks
from vit_flax.training import loop
from vit_flax.training import mesh as mesh_lib

import helpers

# Run first in a script: TensorFlow, TFDS and clu cannot be imported there.
NO_TENSORFLOW = """
import sys
for name in ('tensorflow', 'tensorflow_datasets', 'clu'):
  sys.modules[name] = None
sys.path[:0] = [%r, %r, %r]
"""


def run_without_tensorflow(script: str, *args, devices: int = 1):
  """Runs `script` in a process where TensorFlow, TFDS and clu fail to
  import; returns its stdout."""
  env = dict(os.environ,
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  result = subprocess.run(
      [sys.executable, '-c', NO_TENSORFLOW % (
          helpers.REPO, helpers.TESTS, os.path.dirname(__file__)) + script,
       *args], capture_output=True, text=True, cwd=helpers.REPO,
      env=env, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def array_source(num_train=40, num_test=13, shape=(8, 8, 1), seed=0):
  """Random uint8 images whose labels are their index mod 10."""
  rng = np.random.RandomState(seed)
  arrays = {split: (rng.randint(0, 256, (n,) + shape).astype(np.uint8),
                    np.arange(n) % 10)
            for split, n in (('train', num_train), ('test', num_test))}
  return sources.ArraySource('arrays', arrays, [str(i) for i in range(10)],
                             image_shape=shape)


def device_config(**overrides):
  config = common.get_config()
  config.dataset = 'arrays'
  config.data_on_device = True
  config.pp.crop = 8
  config.pp.augment = 'none'
  config.batch = 8
  config.batch_eval = 4
  config.total_steps = 20
  config.update(overrides)
  return config


@jax.jit
def batch_at(data, step):
  return data.batch_at(step)


def batches(pipeline, start_step, count):
  """Host copies of the batches of steps start_step, ... (count of them)."""
  out = []
  for step, data in zip(range(start_step, start_step + count),
                        pipeline.train_batches(start_step)):
    out.append(jax.device_get(batch_at(data, step)))
  return out


# The augmentations.


def numbered_images(count, size):
  """Float images in [-1, 1] whose pixels are all different."""
  values = np.arange(count * size * size * 3, dtype=np.float32)
  return jnp.asarray(values.reshape(count, size, size, 3) /
                     values.size * 2 - 1)


def test_flip_mirrors_some_images_and_leaves_the_others():
  images = numbered_images(64, 6)
  out = np.asarray(device_augment.random_flip(jax.random.key(0), images))
  flipped = [np.array_equal(o, np.asarray(i)[:, ::-1])
             for o, i in zip(out, images)]
  kept = [np.array_equal(o, i) for o, i in zip(out, np.asarray(images))]
  assert all(f != k for f, k in zip(flipped, kept))
  assert 16 < sum(flipped) < 48


def test_pad_crop_translates_each_image_by_at_most_the_padding():
  size, pad = 8, 2
  images = np.asarray(numbered_images(32, size))
  out = np.asarray(device_augment.pad_crop(jax.random.key(1),
                                           jnp.asarray(images), pad))
  shifts = set()
  for image, crop in zip(images, out):
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)),
                    constant_values=-1.0)
    found = [(dy, dx) for dy in range(2 * pad + 1)
             for dx in range(2 * pad + 1)
             if np.array_equal(padded[dy:dy + size, dx:dx + size], crop)]
    assert len(found) == 1
    shifts.add(found[0])
  assert len(shifts) > 5  # Random offsets, not one.


def test_random_erase_keeps_range_and_dtype_and_erases_one_rectangle():
  images = jnp.full((64, 16, 16, 3), -1.0, jnp.float32)  # Black.
  out = np.asarray(device_augment.random_erase(jax.random.key(2), images,
                                               0.5))
  assert out.dtype == np.float32
  assert out.min() >= -1.0 and out.max() <= 1.0
  # Noise levels are those of uint8 pixels.
  np.testing.assert_allclose((out + 1) * 127.5, np.round((out + 1) * 127.5),
                             atol=1e-4)
  changed = np.any(out != -1, axis=-1)
  erased = [c for c in changed if c.any()]
  assert 16 < len(erased) < 48
  for c in erased:
    rows, cols = np.nonzero(c.any(axis=1))[0], np.nonzero(c.any(axis=0))[0]
    box = c[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    assert box.mean() > 0.9  # A filled rectangle (noise may be black).
    assert 0.02 * 256 * 0.5 <= box.size <= 256 / 3 + 32
  everything = device_augment.random_erase(jax.random.key(2), images, 1.0)
  assert np.all(np.any(np.asarray(everything) != -1, axis=(1, 2, 3)))


def test_inception_crop_boxes_fit_the_image_and_the_ranges():
  height, width = 40, 56
  boxes = np.asarray(device_augment.inception_crop_boxes(
      jax.random.key(3), 2000, height, width))
  top, left, box_h, box_w = boxes.T
  assert np.all((top >= 0) & (left >= 0) & (box_h >= 1) & (box_w >= 1))
  assert np.all((top + box_h <= height) & (left + box_w <= width))
  area = box_h * box_w / (height * width)
  assert area.min() >= 0.05 and area.max() <= 1.0
  assert area.min() < 0.1 and area.max() > 0.9  # The whole range is drawn.
  # Widths are rounded from height x ratio.
  ratio = box_w / box_h
  assert ratio.min() > 0.75 - 1 / box_h.min() and ratio.max() < 4 / 3 + 0.1


def test_inception_crop_boxes_are_drawn_as_tensorflow_draws_them():
  tf = pytest.importorskip('tensorflow')
  height, width, count = 40, 56, 400
  ours = np.asarray(device_augment.inception_crop_boxes(
      jax.random.key(4), count, height, width))
  theirs = []
  for i in range(count):
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        [height, width, 3], tf.zeros([0, 0, 4], tf.float32), seed=[i, 7],
        area_range=device_augment.INCEPTION_AREA,
        aspect_ratio_range=device_augment.INCEPTION_ASPECT_RATIO,
        min_object_covered=0.0, use_image_if_no_bounding_boxes=True)
    theirs.append([begin[0], begin[1], size[0], size[1]])
  theirs = np.array(theirs)
  stats = [(np.mean(b[:, 2] * b[:, 3]) / (height * width),
            np.mean(b[:, 3] / b[:, 2]), np.mean(b[:, 0]), np.mean(b[:, 1]))
           for b in (ours, theirs)]
  # Means of 400 draws: area share (std 0.22), ratio, offsets (std ~6-12).
  for ours_mean, their_mean, atol in zip(*stats, (0.04, 0.03, 1.2, 2.0)):
    assert abs(ours_mean - their_mean) < atol, stats


def test_inception_crop_resizes_the_box():
  size = 16
  rows = np.arange(40, dtype=np.float32)
  # Each pixel holds its row; bilinear resizing keeps that linear.
  images = jnp.asarray(np.broadcast_to(rows[None, :, None, None],
                                       (8, 40, 48, 3)))
  key = jax.random.key(5)
  out = np.asarray(device_augment.inception_crop(key, images, size))
  boxes = np.asarray(device_augment.inception_crop_boxes(key, 8, 40, 48))
  for image, (top, _, box_h, _) in zip(out, boxes):
    want = top + (np.arange(size) + 0.5) * box_h / size - 0.5
    inside = (want >= top) & (want <= top + box_h - 1)
    np.testing.assert_allclose(image[inside, 0, 0], want[inside], atol=1e-3)


def test_uint8_to_float_resizes_and_converts_grayscale():
  images = jnp.full((2, 4, 4, 1), 255, jnp.uint8)
  out = device_augment.to_rgb_float(images, 8)
  assert out.shape == (2, 8, 8, 3) and out.dtype == jnp.float32
  np.testing.assert_allclose(out, 1.0)
  cropped = device_augment.preprocess_eval(
      jnp.zeros((1, 10, 10, 3), jnp.uint8), 6, crop_fraction=0.75)
  assert cropped.shape == (1, 6, 6, 3)


def test_preprocessing_matches_the_host_pipeline():
  tf = pytest.importorskip('tensorflow')
  from vit_flax.data import pipeline  # pylint: disable=g-import-not-at-top
  images = np.random.RandomState(0).randint(0, 256, (3, 28, 28, 1)).astype(
      np.uint8)
  for size, fraction in ((28, 1.0), (32, 1.0), (24, 0.875)):
    host = np.stack([pipeline.preprocess_eval(tf.constant(i), size,
                                              fraction).numpy()
                     for i in images])
    on_device = device_augment.preprocess_eval(jnp.asarray(images), size,
                                               fraction)
    np.testing.assert_allclose(on_device, host, atol=1e-5)


# Batches, placement and evaluation.


def test_batches_are_a_function_of_the_step_and_cover_each_epoch():
  mesh = mesh_lib.create_mesh()
  config = device_config(pp=dict(augment='pad_crop_flip', random_erase=0.5))
  first = batches(device.DevicePipeline(config, mesh, array_source()), 0, 10)
  # A new pipeline started at step 6 (a resumed run) makes the same ones.
  resumed = batches(device.DevicePipeline(config, mesh, array_source()), 6,
                    4)
  for a, b in zip(first[6:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  # 40 examples, 8 per step: each epoch (5 steps) shows every example once;
  # the next epoch in another order.
  plain = device.DevicePipeline(device_config(), mesh, array_source())
  data = next(plain.train_batches(0))
  epochs = [np.concatenate([np.asarray(jax.jit(data.indices_at)(s)).ravel()
                            for s in range(e * 5, e * 5 + 5)])
            for e in range(2)]
  for order in epochs:
    assert sorted(order) == list(range(40))
  assert list(epochs[0]) != list(epochs[1])


def test_a_batch_larger_than_the_split_reaches_into_later_epochs():
  config = device_config(batch=24)
  pipeline = device.DevicePipeline(config, mesh_lib.create_mesh(),
                                   array_source(num_train=10))
  steps = batches(pipeline, 0, 5)
  labels = np.concatenate([b['label'] for b in steps])
  # 120 examples: 12 epochs of the 10, each once per epoch.
  for epoch in range(12):
    assert sorted(labels[epoch * 10:(epoch + 1) * 10]) == list(range(10))
  resumed = batches(device.DevicePipeline(config, mesh_lib.create_mesh(),
                                          array_source(num_train=10)), 3, 2)
  np.testing.assert_array_equal(resumed[1]['image'], steps[4]['image'])


def test_curriculum_phases_get_their_image_size():
  config = device_config(total_steps=4, pp=dict(curriculum=((0, 4), (2, 8))))
  pipeline = device.DevicePipeline(config, mesh_lib.create_mesh(),
                                   array_source())
  sizes = [b['image'].shape[1] for b in batches(pipeline, 0, 4)]
  assert sizes == [4, 4, 8, 8]


def evaluate_on_device(pipeline, params_fn):
  """(count, sum of labels) over the eval batches, from the masks."""
  count, total = 0.0, 0.0
  for data in pipeline.eval_batches():
    batch = jax.device_get(jax.jit(lambda d: d.materialize())(data))
    count += batch['mask'].sum()
    total += (batch['label'] * batch['mask']).sum()
    params_fn(batch)
  return count, total


def test_eval_batches_hold_every_example_once():
  source = array_source(num_test=13)
  pipeline = device.DevicePipeline(device_config(), mesh_lib.create_mesh(),
                                   source)
  shapes = []
  count, total = evaluate_on_device(
      pipeline, lambda b: shapes.append(b['image'].shape))
  assert count == 13 and total == sum(np.arange(13) % 10)
  assert shapes == [(4, 8, 8, 3)] * 4  # 13 examples, 3 padded.


FOUR_DEVICES = """
import jax, numpy as np
import test_device
from vit_flax.data import device
from vit_flax.training import mesh as mesh_lib
assert jax.device_count() == 4
mesh = mesh_lib.create_mesh()
for layout in ('replicated', 'sharded'):
  pipeline = device.DevicePipeline(test_device.device_config(), mesh,
                                   test_device.array_source(num_test=13),
                                   layout=layout)
  steps = test_device.batches(pipeline, 0, 5)
  labels = np.concatenate([b['label'] for b in steps])
  count, total = test_device.evaluate_on_device(pipeline, lambda b: None)
  print(layout, pipeline.bytes_per_device(), count, total,
        ' '.join(map(str, labels)))
"""


@pytest.mark.slow
def test_replicated_and_sharded_layouts_on_four_devices():
  out = run_without_tensorflow(FOUR_DEVICES, devices=4).split('\n')
  lines = {line.split()[0]: line.split()[1:] for line in out if line}
  one_device = device.DevicePipeline(device_config(), mesh_lib.create_mesh(),
                                     array_source(num_test=13))
  labels = np.concatenate([b['label'] for b in batches(one_device, 0, 5)])
  # Replicated: the batches of one device, every device holding all.
  assert lines['replicated'][3:] == [str(l) for l in labels]
  replicated_bytes = int(lines['replicated'][0])
  sharded_bytes = int(lines['sharded'][0])
  assert sharded_bytes < replicated_bytes / 2
  for layout in ('replicated', 'sharded'):
    count, total = map(float, lines[layout][1:3])
    assert count == 13 and total == sum(np.arange(13) % 10)
    # An epoch (5 steps of 8) shows each of the 40 examples once.
    assert sorted(lines[layout][3:]) == sorted(str(i % 10) for i in range(40))


@pytest.mark.slow
def test_eval_matches_the_host_pipelines_accuracy():
  pytest.importorskip('tensorflow')
  # pylint: disable=g-import-not-at-top
  from vit_flax.data import pipeline as pipeline_lib
  from vit_flax.models import presets
  from vit_flax.training import step as step_lib
  # pylint: enable=g-import-not-at-top
  config = device_config(batch_eval=8, pp=dict(crop=12))
  config.model = helpers.tiny_model_config()
  mesh = mesh_lib.create_mesh()
  model = presets.create_model('vit', config.model, 10)
  params = helpers.random_head_params(model, 12)
  eval_step = step_lib.make_eval_step(model, 10, mesh)
  sharding = mesh_lib.batch_sharding(mesh)
  results = [loop.evaluate(eval_step, params, pipeline, sharding)
             for pipeline in (
                 pipeline_lib.Pipeline(config, source=array_source()),
                 device.DevicePipeline(config, mesh, array_source()))]
  assert results[0]['eval_count'] == results[1]['eval_count'] == 13
  assert results[0]['eval_accuracy'] == results[1]['eval_accuracy']
  np.testing.assert_allclose(results[0]['eval_loss'],
                             results[1]['eval_loss'], rtol=1e-5)


# Sources.


def test_image_folders_load_into_memory_without_tensorflow(tmp_path):
  for split, count in (('train', 3), ('test', 2)):
    for name in ('cat', 'dog'):
      os.makedirs(tmp_path / split / name)
      for i in range(count):
        Image.fromarray(np.full((5, 6), 40 * i, np.uint8)).save(
            tmp_path / split / name / f'{i}.png')
  source = sources.ImageFolderSource(str(tmp_path))
  images, labels = source.load_arrays('train', 0, 1, drop_remainder=True)
  assert images.shape == (6, 5, 6, 3) and images.dtype == np.uint8
  assert list(labels) == [0, 0, 0, 1, 1, 1]
  assert images[1].max() == 40  # Grayscale -> RGB.
  Image.fromarray(np.zeros((7, 7, 3), np.uint8)).save(
      tmp_path / 'test' / 'dog' / 'big.png')
  with pytest.raises(sources.DataError, match='shapes'):
    source.load_arrays('test', 0, 1, drop_remainder=False)


def test_index_slices_resolve_as_tfds_does():
  sizes = {'train': 10, 'test': 4}
  assert sources._index_ranges('train[:5]+test[-3:]', sizes) == [
      ('train', 0, 5), ('test', 1, 4)]
  assert sources._index_ranges('train[:50%]', sizes) is None
  with pytest.raises(sources.DataError, match='beyond'):
    sources._index_ranges('train[2:100]', sizes)
  with pytest.raises(sources.DataError, match='Unknown split'):
    sources._index_ranges('validation', sizes)


# Config.


@pytest.mark.parametrize('pp, named', [
    (dict(randaugment=(2, 9)), 'pp.randaugment=(2, 9)'),
    (dict(trivial_augment=True), 'pp.trivial_augment=True'),
])
def test_an_augmentation_without_device_version_is_a_config_error(
    tmp_path, pp, named):
  config = helpers.small_fashion_mnist_config(str(tmp_path / 'data'),
                                              data_on_device=True)
  config.pp.update(pp)
  workdir = tmp_path / 'run'
  with pytest.raises(errors.ConfigError) as error:
    loop.train_and_evaluate(config, str(workdir))
  assert named in str(error.value)
  assert 'data_on_device=False' in str(error.value)
  assert not workdir.exists()


def test_auto_picks_inception_crops_for_larger_images_on_the_devices_too():
  config = device_config(pp=dict(augment='auto', crop=24))
  pipeline = device.DevicePipeline(config, mesh_lib.create_mesh(),
                                   array_source(shape=(96, 96, 3)))
  assert pipeline.augment == 'inception_crop_flip'
  assert batches(pipeline, 0, 1)[0]['image'].shape == (8, 24, 24, 3)


@pytest.mark.parametrize('value', ['yes', 1, None])
def test_bad_data_on_device_is_a_config_error(value):
  config = device_config(model=helpers.tiny_model_config())
  config.data_on_device = value
  with pytest.raises(errors.ConfigError, match='data_on_device'):
    config_checks.check_config(config)


def test_auto_puts_small_data_with_device_augmentations_on_the_devices(
    monkeypatch):
  config = device_config(pp=dict(augment='flip'))
  config.data_on_device = 'auto'
  assert device.use_data_on_device(config, array_source())
  config.pp.randaugment = (2, 9)
  assert not device.use_data_on_device(config, array_source())
  config.pp.randaugment = ()
  monkeypatch.setattr(device, 'device_memory_bytes', lambda: 1000)
  assert not device.use_data_on_device(config, array_source())  # 3392 B.
  config.data_on_device = False
  assert not device.use_data_on_device(config, array_source())


# Training without TensorFlow.


TRAIN = """
import json, os, sys
import jax
import numpy as np
import helpers
from vit_flax.configs import quickstart
from vit_flax.training import loop
from vit_flax.training import metrics
from vit_flax.training import preemption
from vit_flax.weights import npz

data, workdir, stop_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
# As if SIGTERM came during step `stop_at`: the loop saves and stops.
preemption.PreemptionHandler.should_stop = lambda self, step: step == stop_at
helpers.write_fashion_mnist(data, num_train=48, num_test=20)
config = quickstart.get_config().unlock()
config.update(tfds_manual_dir=data, data_on_device=True, batch=8,
              batch_eval=8, total_steps=6, warmup_steps=1,
              eval_every=3, progress_every=3, checkpoint_every=3,
              checkpoint_every_minutes=0.0, eval_figures=False)
config.model = helpers.tiny_model_config(patch=7)
config.model.transformer.dropout_rate = 0.1  # Its keys must resume too.
state = loop.train_and_evaluate(config, workdir)
if os.path.exists(workdir + '/final.npz'):
  os.remove(workdir + '/final.npz')  # Of the run stopped early.
npz.save(jax.device_get(state.params), workdir + '/final.npz')
for name in ('tensorflow', 'tensorflow_datasets', 'clu'):
  assert sys.modules[name] is None, name  # Never imported.
print(json.dumps(metrics.read_scalars(workdir)))
"""


@pytest.mark.slow
def test_quickstart_trains_on_the_devices_without_tensorflow_and_resumes(
    tmp_path):
  data = str(tmp_path / 'data')
  whole, parts = str(tmp_path / 'whole'), str(tmp_path / 'parts')
  scalars = run_without_tensorflow(TRAIN, data, whole, '0')
  run_without_tensorflow(TRAIN, data, parts, '4')  # Stopped after step 4,
  resumed = run_without_tensorflow(TRAIN, data, parts, '0')  # then resumed.
  # TensorBoard's reader reads what was written.
  import json  # pylint: disable=g-import-not-at-top
  scalars = json.loads(scalars.strip().splitlines()[-1])
  assert [s for s, _ in scalars['loss']] == [3, 6]
  assert [v for _, v in scalars['eval_count']] == [20.0, 20.0]
  resumed = json.loads(resumed.strip().splitlines()[-1])
  for tag in ('loss', 'accuracy', 'grad_norm', 'eval_loss', 'eval_accuracy'):
    assert resumed[tag] == scalars[tag], tag
  assert os.path.isdir(os.path.join(parts, 'checkpoints'))
  final = {name: helpers.final_params(workdir)
           for name, workdir in (('whole', whole), ('parts', parts))}
  for key, value in final['whole'].items():
    np.testing.assert_array_equal(final['parts'][key], value, err_msg=key)


@pytest.mark.slow
def test_the_training_path_imports_no_tensorflow_even_where_installed(
    tmp_path):
  # tensorboard imports TensorFlow where it is installed when some of its
  # modules are used; those that vit_flax uses must not.
  result = subprocess.run(
      [sys.executable, '-c',
       'import sys, vit_flax, vit_flax.models\n'
       'from vit_flax.training import loop, metrics\n'
       'from vit_flax.data import device, idx\n'
       'from vit_flax.bench import benchmark, gpu_check\n'
       "metrics.ResumableWriter(sys.argv[1]).write_scalars(1, {'a': 1.0})\n"
       'metrics.read_scalars(sys.argv[1])\n'
       "print(sorted(m for m in sys.modules if m.split('.')[0] in "
       "('tensorflow', 'tensorflow_datasets', 'clu')))", str(tmp_path)],
      capture_output=True, text=True, cwd=helpers.REPO, check=True)
  assert result.stdout.strip() == '[]'


def test_tfds_data_sets_load_into_memory():
  tfds = pytest.importorskip('tensorflow_datasets')
  config = device_config(dataset='cifar10', pp=dict(crop=32))
  with tfds.testing.mock_data(num_examples=12):
    pipeline = device.DevicePipeline(config, mesh_lib.create_mesh())
  assert pipeline.train_size == 12 and pipeline.eval_size == 12
  count, _ = evaluate_on_device(pipeline, lambda b: None)
  assert count == 12
  assert batches(pipeline, 0, 1)[0]['image'].shape == (8, 32, 32, 3)

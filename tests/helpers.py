"""Shared helpers for the tests: tiny configs, reading what a run wrote."""

import functools
import glob
import gzip
import os
import pathlib
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from vit_flax.configs import common
from vit_flax.models import presets
from vit_flax.models import vit
from vit_flax.training import mesh as mesh_lib
from vit_flax.training import optim
from vit_flax.training import step
from vit_flax.weights import npz

# The repository, and the tests' folder (shared helpers live here).
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, 'tests')


def tiny_model_config(classifier='token', hidden_size=16, num_layers=2,
                      patch=4, **overrides) -> ml_collections.ConfigDict:
  """A ViT small enough that init, forward and a few steps take milliseconds."""
  config = ml_collections.ConfigDict({
      'model_name': 'tiny',
      'patches': {'size': (patch, patch)},
      'hidden_size': hidden_size,
      'transformer': {
          'mlp_dim': 2 * hidden_size,
          'num_heads': 2,
          'num_layers': num_layers,
          'attention_dropout_rate': 0.0,
          'dropout_rate': 0.0,
      },
      'classifier': classifier,
      'representation_size': None,
  })
  config.update(overrides)
  return config


def small_fashion_mnist_config(data, **overrides):
  """A tiny ViT on the Fashion-MNIST IDX files in `data`: 4 steps of 8
  images, evaluating and checkpointing midway."""
  config = common.get_config()
  config.dataset = 'fashion_mnist'
  config.tfds_manual_dir = data
  config.pp.crop = 28
  config.model = tiny_model_config(patch=7)
  config.optimizer = 'adamw'
  config.optim_dtype = 'float32'
  config.base_lr = 1e-3
  config.batch = 8
  config.batch_eval = 8
  config.total_steps = 4
  config.warmup_steps = 1
  config.eval_every = 4
  config.progress_every = 2
  config.checkpoint_every = 2
  config.update(overrides)
  return config


def read_scalars(workdir) -> dict:
  """{tag: {step: value}} of the TensorBoard scalars written in `workdir`."""
  from vit_flax.training import metrics  # pylint: disable=g-import-not-at-top
  return {tag: dict(points)
          for tag, points in metrics.read_scalars(workdir).items()}


def write_idx(path, array) -> None:
  """Writes a gzipped IDX file, the format of (Fashion-)MNIST."""
  header = bytes([0, 0, 8, array.ndim]) + b''.join(
      d.to_bytes(4, 'big') for d in array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + np.asarray(array, np.uint8).tobytes())


def write_fashion_mnist(directory, num_train, num_test, seed=0) -> None:
  """A small random Fashion-MNIST (the four IDX files), if not there yet."""
  from vit_flax.data import idx  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(seed)
  os.makedirs(directory, exist_ok=True)
  for split, n in (('train', num_train), ('test', num_test)):
    images_file, labels_file = idx.FASHION_MNIST_FILES[split]
    labels = np.arange(n) % 10
    # Learnable: each class has its own mean brightness.
    images = np.clip(rng.randn(n, 28, 28) * 20 + labels[:, None, None] * 20
                     + 30, 0, 255)
    for name, array in ((images_file, images), (labels_file, labels)):
      path = os.path.join(directory, name)
      if not os.path.exists(path):
        write_idx(path + '.tmp', array)
        os.replace(path + '.tmp', path)


def train_losses(model_type, model_config, images, labels, num_classes,
                 steps):
  """Losses of `steps` Adam steps of the project's train step on one batch."""
  config = common.get_config()
  config.optimizer = 'adam'
  config.optim_dtype = 'float32'
  config.base_lr = 1e-2
  model = presets.create_model(model_type, model_config, num_classes)
  schedule = optim.create_learning_rate_schedule(steps, config.base_lr,
                                                 'constant', 0)
  tx = optim.create_optimizer(config, schedule)
  mesh = mesh_lib.create_mesh()
  state = step.create_train_state(model, tx, config, images.shape[1], mesh)
  train_step = step.make_train_step(model, tx, schedule, config, num_classes,
                                    mesh)
  losses = []
  for _ in range(steps):
    state, metrics = train_step(state, {'image': images, 'label': labels})
    losses.append(float(metrics['loss']))
  return losses


def final_params(workdir):
  """The flat params tiny_run.py saved in `workdir`/final.npz at the end."""
  return npz.flatten(
      npz.load(os.path.join(workdir, 'final.npz')))

# A tiny model saved as .npz with images to run it on (predict, inference).
NUM_CLASSES = 10  # Fashion-MNIST's.


def inference_run_config():
  config = common.get_config()
  config.dataset = 'fashion_mnist'
  config.pp.crop = 16
  config.model = tiny_model_config()
  return config


def random_head_params(model, image_size, seed=1):
  """Initial params with a random head (the initial one is zero: all ties)."""
  params = jax.device_get(jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(0), jnp.ones((1, image_size, image_size, 3)))['params'])
  head = params['head']['kernel']
  params['head']['kernel'] = np.random.RandomState(seed).randn(
      *head.shape).astype(np.float32)
  return params


def write_inference_run(directory):
  """A tiny model saved as .npz in `directory`, its config, a few images."""
  directory = pathlib.Path(directory)
  config = inference_run_config()
  model = vit.VisionTransformer(num_classes=NUM_CLASSES, **config.model)
  params = random_head_params(model, 16)
  npz.save(params, directory / 'model.npz')
  # Distinct content and sizes (resized to 16), one grayscale.
  rows, cols = np.mgrid[0:20, 0:24]
  red = np.array([220, 30, 30], np.uint8)
  images = {
      'dark.png': np.full((20, 24, 3), 20, np.uint8),
      'gray.png': np.full((28, 28), 230, np.uint8),
      'red.png': np.broadcast_to(red, (16, 16, 3)),
      'stripes.png': np.stack([(cols * 10) % 256] * 3, -1).astype(np.uint8),
      'checks.png': np.repeat(((rows // 4 + cols // 4) % 2 * 255).astype(
          np.uint8)[..., None], 3, axis=-1),
  }
  for name, pixels in images.items():
    Image.fromarray(pixels).save(directory / name)
  return types.SimpleNamespace(
      dir=directory, config=config, model=model, params=params,
      images=[str(directory / name) for name in images])


def committed_steps(workdir):
  """Steps of the committed checkpoints of a run in `workdir`."""
  names = glob.glob(os.path.join(workdir, 'checkpoints', '*'))
  return sorted(int(os.path.basename(n)) for n in names
                if os.path.basename(n).isdigit())


def saving_now(workdir):
  """Whether a checkpoint of the run in `workdir` is being written."""
  return bool(glob.glob(os.path.join(workdir, 'checkpoints',
                                     '*.orbax-checkpoint-tmp*')))

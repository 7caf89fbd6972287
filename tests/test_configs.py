"""Every config file loads and builds its model; the from-scratch recipes
train a few steps on mock data and lower the loss."""

import glob
import importlib
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from vit_flax.models import presets
from vit_flax.training import loop

from helpers import read_scalars
from helpers import write_fashion_mnist

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(
    os.path.join(REPO, 'configs', '*.py'))
                 if not p.endswith(('__init__.py', 'common.py')))


@pytest.mark.parametrize('name', CONFIGS)
def test_every_config_builds_its_model(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  model = presets.create_model_for(config, 10)
  presets.abstract_params(model, config.pp.crop)


def short_run(config, steps=24):
  """`config` cut to a few steps of a small batch, no checkpoints."""
  with config.unlocked():
    config.total_steps = steps
    config.warmup_steps = 2
    config.batch = 8
    config.batch_eval = 8
    config.eval_every = steps
    config.progress_every = 4
    config.checkpoint_every = 0
    config.eval_figures = False
    config.shuffle_buffer = 16
    config.ema_decay = min(config.ema_decay, 0.9)
  return config


def assert_loss_falls(workdir):
  losses = read_scalars(workdir)['loss']
  steps = sorted(losses)
  assert np.mean([losses[s] for s in steps[-2:]]) < np.mean(
      [losses[s] for s in steps[:2]]), losses


@pytest.mark.slow
@pytest.mark.parametrize('name', ['vit_cifar10_scratch', 'vit_b16_reduced'])
def test_recipe_trains_on_mock_data(name, tmp_path):
  config = short_run(importlib.import_module(f'configs.{name}').get_config())
  with config.unlocked():
    config.pp.curriculum = ()  # Steps, not epochs, in so short a run.
    # The recipe whole, on 16 px images: 16 (not 64) tokens make the steps
    # and their compilation several times cheaper.
    config.pp.crop = 16
  with tfds.testing.mock_data(num_examples=8):
    loop.train_and_evaluate(config, str(tmp_path))
  assert_loss_falls(tmp_path)


@pytest.mark.slow  # CCT-7/3x1: 256 tokens of width 256, ~1 s a step here.
def test_cct_cifar10_recipe_trains_on_mock_data(tmp_path):
  config = importlib.import_module('configs.cct_cifar10').get_config()
  config = short_run(config, steps=12)
  assert config.model.model_name == 'CCT-7/3x1'
  with config.unlocked():
    config.pp.crop = 16  # 64 tokens (256 at 32 px): the recipe, cheaper.
  with tfds.testing.mock_data(num_examples=8):
    loop.train_and_evaluate(config, str(tmp_path))
  assert_loss_falls(tmp_path)


@pytest.mark.slow  # 15-30 s each here, compilation included.
@pytest.mark.parametrize(
    'name', ['quickstart', 'cct_fashion_mnist', 'hybrid_fashion_mnist'])
def test_fashion_mnist_configs_train_on_idx_files(name, tmp_path):
  write_fashion_mnist(tmp_path / 'data', 64, 16)
  config = short_run(importlib.import_module(f'configs.{name}').get_config())
  with config.unlocked():
    config.tfds_manual_dir = str(tmp_path / 'data')
  loop.train_and_evaluate(config, str(tmp_path / 'run'))
  assert_loss_falls(tmp_path / 'run')


@pytest.mark.slow
def test_tinyimagenet_recipe_trains_on_an_image_folder(tmp_path):
  rng = np.random.RandomState(0)
  for split in ('train', 'test'):
    for label in range(3):
      folder = tmp_path / 'data' / split / f'class{label}'
      folder.mkdir(parents=True)
      for i in range(3):
        pixels = np.full((64, 64, 3), 40 + 80 * label, np.uint8)
        pixels += rng.randint(0, 30, pixels.shape).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f'{i}.png')
  config = importlib.import_module(
      'configs.vit_tinyimagenet_scratch').get_config()
  with config.unlocked():
    config.dataset = str(tmp_path / 'data')
  loop.train_and_evaluate(short_run(config), str(tmp_path / 'run'))
  assert_loss_falls(tmp_path / 'run')

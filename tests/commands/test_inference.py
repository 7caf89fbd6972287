"""Tests of vit_flax.inference: loading models for inference, class names."""

import numpy as np
import pytest

from vit_flax import errors
from vit_flax.commands import inference
from vit_flax.models import presets
from vit_flax.models import vit
from vit_flax.weights import npz

from helpers import inference_run_config
from helpers import NUM_CLASSES
from helpers import random_head_params
from helpers import write_inference_run


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  return write_inference_run(tmp_path_factory.mktemp('inference'))


def test_class_names_come_from_the_dataset(run):
  loaded = inference.load_inference_model(
      which=str(run.dir / 'model.npz'), config=run.config)
  assert loaded.image_size == 16 and loaded.num_classes == NUM_CLASSES
  names, note = inference.dataset_class_names(loaded.config, NUM_CLASSES)
  assert note is None
  assert names[0] == 'T-shirt/top' and names[9] == 'Ankle boot'


def test_class_names_fall_back_to_indices_with_a_note(run):
  config = inference_run_config()
  config.dataset = 'no_such_dataset_anywhere'
  names, note = inference.dataset_class_names(config, NUM_CLASSES)
  assert names == [str(i) for i in range(NUM_CLASSES)]
  assert 'no_such_dataset_anywhere' in note and '--class_names_file' in note
  names, note = inference.dataset_class_names(run.config, 7)
  assert names == [str(i) for i in range(7)]
  assert 'has 10 classes but the model 7' in note


def test_checkpoint_and_flag_errors_are_clear(run, tmp_path):
  with pytest.raises(npz.CheckpointNotFoundError, match='not.npz'):
    inference.load_inference_model(which=str(tmp_path / 'not.npz'),
                                   config=run.config)
  with pytest.raises(errors.UserError, match='--workdir'):
    inference.load_inference_model(which='best', config=run.config)
  with pytest.raises(errors.UserError, match='exactly one of --config'):
    inference.load_inference_model(which=str(run.dir / 'model.npz'))
  with pytest.raises(errors.UserError, match='not --workdir'):
    inference.load_inference_model(workdir=str(tmp_path),
                                   which=str(run.dir / 'model.npz'))
  # The workdir of visualize / predict given a file: said so, as main.py does.
  for which in ('latest', 'best'):
    with pytest.raises(errors.CheckpointError,
                       match=r'model.npz is a file, not the workdir of a run'):
      inference.load_inference_model(workdir=str(run.dir / 'model.npz'),
                                     which=which)
  other = inference_run_config()
  other.model.transformer.mlp_dim = 8
  with pytest.raises(errors.CheckpointError, match='MlpBlock_3'):
    inference.load_inference_model(which=str(run.dir / 'model.npz'),
                                   config=other)


def test_a_preset_takes_the_image_size_of_its_position_embeddings(tmp_path):
  model = vit.VisionTransformer(
      num_classes=3, **presets.get_model_config('testing'))
  npz.save(random_head_params(model, 32), tmp_path / 'testing.npz')
  loaded = inference.load_inference_model(
      which=str(tmp_path / 'testing.npz'), model_name='testing')
  assert loaded.image_size == 32  # 2x2 patches of 16 pixels.
  assert loaded.num_classes == 3
  assert inference.pixels_per_patch(
      presets.get_model_config('R50+ViT-B_16')) == 16
  assert inference.pixels_per_patch(
      presets.get_model_config('R26+ViT-B_32')) == 32




def test_an_image_far_smaller_than_the_input_gets_a_warning(tmp_path,
                                                            caplog):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / 'dot.png')
  Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(tmp_path / 'ok.png')
  with caplog.at_level('WARNING'):
    image = inference.read_image(str(tmp_path / 'dot.png'), 28)
    inference.read_image(str(tmp_path / 'ok.png'), 28)
  assert image.shape == (28, 28, 3)
  warnings = [r.getMessage() for r in caplog.records
              if r.levelname == 'WARNING']
  assert len(warnings) == 1
  assert 'dot.png is 1x1 pixels, far smaller than the model' in warnings[0]

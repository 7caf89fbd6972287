"""Tests of vit_flax.predict: same outputs as evaluation, bad inputs, CLI."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from vit_flax.commands import inference
from vit_flax.commands import predict
from vit_flax.data import pipeline
from vit_flax.models import vit
from vit_flax.training import mesh
from vit_flax.training import step

import helpers
from helpers import inference_run_config
from helpers import NUM_CLASSES
from helpers import random_head_params
from helpers import write_inference_run

REPO = helpers.REPO


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  return write_inference_run(tmp_path_factory.mktemp('predict'))


def load(run):
  return inference.load_inference_model(which=str(run.dir / 'model.npz'),
                                        config=run.config)


def eval_tensors(paths, size):
  """The evaluation preprocessing of each file, decoded independently (PIL)."""
  tensors = []
  for path in paths:
    pixels = np.asarray(Image.open(path))
    if pixels.ndim == 2:
      pixels = pixels[..., None]  # As the pipeline's Fashion-MNIST arrays.
    tensors.append(pipeline.preprocess_eval(tf.constant(pixels), size))
  return np.stack(tensors)


def test_predict_matches_the_eval_step_on_the_same_tensors(run):
  loaded = load(run)
  assert loaded.image_size == 16 and loaded.num_classes == NUM_CLASSES
  # batch_size 2: three batches, the last one padded.
  predictions = predict.predict_files(loaded, run.images,
                                      top_k=NUM_CLASSES, batch_size=2)
  assert [p.path for p in predictions] == run.images
  assert all(p.error is None for p in predictions)

  images = eval_tensors(run.images, 16)
  for p, image in zip(predictions, images):
    np.testing.assert_array_equal(p.image, image)
  expected = jax.nn.softmax(
      run.model.apply({'params': run.params}, images, train=False))
  got = np.zeros_like(expected)
  for row, p in zip(got, predictions):
    for index, _, probability in p.classes:
      row[index] = probability
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)

  top1 = np.array([p.classes[0][0] for p in predictions])
  assert len(set(top1)) > 1  # The comparison tells classes apart.
  eval_step = step.make_eval_step(run.model, NUM_CLASSES, mesh.create_mesh())
  sums = eval_step(run.params, {'image': images, 'label': top1,
                                'mask': np.ones(len(images), np.float32)})
  assert int(sums['correct']) == len(images)


def test_class_names_come_from_the_dataset(run):
  loaded = load(run)
  names, note = inference.dataset_class_names(loaded.config, NUM_CLASSES)
  assert note is None
  assert names[0] == 'T-shirt/top' and names[9] == 'Ankle boot'
  (p,) = predict.predict_files(loaded, run.images[:1], class_names=names,
                               top_k=3)
  assert len(p.classes) == 3
  assert [name for _, name, _ in p.classes] == [names[i]
                                                for i, _, _ in p.classes]
  probabilities = [prob for _, _, prob in p.classes]
  assert probabilities == sorted(probabilities, reverse=True)


def test_each_bad_file_gets_a_message_and_the_others_are_predicted(run,
                                                                   tmp_path):
  (tmp_path / 'notes.png').write_text('not an image')
  rng = np.random.RandomState(0)
  Image.fromarray(rng.randint(0, 256, (16, 16, 4), np.uint8)).save(
      tmp_path / 'rgba.png')
  Image.fromarray(rng.randint(0, 256, (16, 16, 2), np.uint8), 'LA').save(
      tmp_path / 'gray_alpha.png')
  paths = [str(tmp_path / 'notes.png'), run.images[0],
           str(tmp_path / 'rgba.png'), str(tmp_path / 'missing.png'),
           str(tmp_path / 'gray_alpha.png'), str(tmp_path), run.images[1]]
  predictions = predict.predict_files(load(run), paths, batch_size=4)
  assert [p.path for p in predictions] == paths
  errors_by_name = {os.path.basename(p.path): p.error for p in predictions}
  assert 'notes.png is not an image' in errors_by_name['notes.png']
  assert '4 channels (RGBA)' in errors_by_name['rgba.png']
  assert '2 channels (grayscale with alpha)' in errors_by_name[
      'gray_alpha.png']
  assert 'no such file' in errors_by_name['missing.png']
  assert 'cannot be read' in errors_by_name[os.path.basename(tmp_path)]
  good = [p for p in predictions if p.error is None]
  assert [p.path for p in good] == run.images[:2]
  assert all(len(p.classes) == 5 for p in good)


def test_text_json_and_grid_outputs(run):
  predictions = predict.predict_files(
      load(run), run.images[:2] + [str(run.dir / 'missing.png')], top_k=2)
  text = predict.format_text(predictions)
  assert run.images[0] in text and 'missing.png' not in text
  items = json.loads(predict.format_json(predictions))
  assert [len(item.get('predictions', [])) for item in items] == [2, 2, 0]
  assert 'no such file' in items[2]['error']
  assert set(items[0]['predictions'][0]) == {'class', 'name', 'probability'}
  grid = predict.predictions_grid_figure(predictions)
  assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[-1] == 3
  assert grid.std() > 0


@pytest.mark.slow
def test_cli_predicts_the_good_files_and_exits_nonzero_on_bad_ones(run,
                                                                   tmp_path):
  model = run.config.model.to_dict()
  (tmp_path / 'run_config.py').write_text(
      'import ml_collections\n'
      'from configs import common\n'
      'def get_config():\n'
      '  config = common.get_config()\n'
      '  config.dataset = "fashion_mnist"\n'
      '  config.pp.crop = 16\n'
      f'  config.model = ml_collections.ConfigDict({model!r})\n'
      '  return config\n')
  (tmp_path / 'notes.txt').write_text('not an image')
  result = subprocess.run(
      [sys.executable, '-m', 'vit_flax.predict',
       f'--checkpoint={run.dir / "model.npz"}',
       f'--config={tmp_path / "run_config.py"}', '--json', '--top_k=3',
       f'--grid={tmp_path / "grid.png"}', run.images[0],
       str(tmp_path / 'notes.txt'), run.images[1]],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 1, result.stderr
  assert 'notes.txt is not an image' in result.stderr
  items = json.loads(result.stdout)
  assert [item['file'] for item in items] == [
      run.images[0], str(tmp_path / 'notes.txt'), run.images[1]]
  names = {p['name'] for item in items for p in item.get('predictions', [])}
  class_names = inference.dataset_class_names(run.config, NUM_CLASSES)[0]
  assert names and names <= set(class_names)
  assert Image.open(tmp_path / 'grid.png').mode == 'RGB'


def test_a_distilled_model_predicts_the_mean_of_its_heads(run):
  config = inference_run_config()
  config.model.classifier = 'token_distill'
  model = vit.VisionTransformer(num_classes=NUM_CLASSES, **config.model)
  params = random_head_params(model, 16)
  params['head_dist']['kernel'] = np.random.RandomState(2).randn(
      *params['head_dist']['kernel'].shape).astype(np.float32)
  loaded = inference.build_inference_model(config, params)
  predictions = predict.predict_files(loaded, run.images[:3],
                                      top_k=NUM_CLASSES)
  images = np.stack([p.image for p in predictions])
  class_logits, distill_logits = model.apply(
      {'params': params}, images, train=False, distill_outputs=True)
  expected = jax.nn.softmax((class_logits + distill_logits) / 2)
  for row, p in zip(expected, predictions):
    got = np.zeros(NUM_CLASSES)
    for index, _, probability in p.classes:
      got[index] = probability
    np.testing.assert_allclose(got, row, rtol=1e-5, atol=1e-6)

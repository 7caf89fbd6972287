"""Tests of vit_flax.visualize: rollout, distances, filters, figures, CLI."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from vit_flax.figures import analysis
from vit_flax.figures import drawing
from vit_flax.figures import probe as probe_lib
from vit_flax.models import vit
from vit_flax.weights import npz

import helpers
from helpers import tiny_model_config

REPO = helpers.REPO


def init(config, image_size=16, num_classes=5, seed=0):
  model = vit.VisionTransformer(num_classes=num_classes, **config)
  params = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(seed), jnp.ones((1, image_size, image_size, 3)))['params']
  return model, jax.device_get(params)


@functools.lru_cache(maxsize=None)
def tiny_vit(classifier='token'):
  """(config, model, params) of a 2-layer ViT on 16px images, 4x4 patches."""
  config = tiny_model_config(classifier=classifier)
  return (config,) + init(config)


def random_images(n=2, size=16, seed=0):
  return np.random.RandomState(seed).uniform(
      -1, 1, (n, size, size, 3)).astype(np.float32)


def random_attention(shape, seed=0):
  """Softmax rows of random logits: valid attention weights."""
  logits = np.random.RandomState(seed).randn(*shape)
  weights = np.exp(logits)
  return weights / weights.sum(-1, keepdims=True)


def assert_rgb_figure(image):
  assert image.dtype == np.uint8
  assert image.ndim == 3 and image.shape[-1] == 3
  assert min(image.shape[:2]) >= 100
  assert image.std() > 0  # Something was drawn.


def test_collect_attentions_orders_layers_by_number_not_as_strings():
  weights = lambda n: (np.full((1, 2, n, n), 1.0 / n),)
  block = lambda n: {'MultiHeadDotProductAttention_1':
                     {'attention_weights': weights(n)}}
  # As jit returns it: keys sorted as strings.
  intermediates = {'Transformer': {
      'stage_0': {'encoderblock_0': block(17), 'encoderblock_1': block(17)},
      'stage_1': {'encoderblock_0': block(5), 'encoderblock_10': block(5),
                  'encoderblock_2': block(5)},
  }}
  found = analysis.collect_attentions(intermediates)
  assert [path for path, _ in found] == [
      'Transformer/stage_0/encoderblock_0/MultiHeadDotProductAttention_1',
      'Transformer/stage_0/encoderblock_1/MultiHeadDotProductAttention_1',
      'Transformer/stage_1/encoderblock_0/MultiHeadDotProductAttention_1',
      'Transformer/stage_1/encoderblock_2/MultiHeadDotProductAttention_1',
      'Transformer/stage_1/encoderblock_10/MultiHeadDotProductAttention_1',
  ]
  assert [a.shape[-1] for _, a in found] == [17, 17, 5, 5, 5]


def test_probe_collects_every_layer_and_the_patch_embeddings():
  _, model, params = tiny_vit()
  probe = probe_lib.probe(model, params, random_images(2))
  assert len(probe.attentions) == 2
  for weights in probe.attentions:
    assert weights.shape == (2, 2, 17, 17)  # batch, heads, 1 + 4x4 tokens.
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
  assert probe.patch_embeddings.shape == (2, 4, 4, 16)
  assert probe.grid_shape() == (4, 4)
  assert probe.num_prefix('token') == 1
  logits = model.apply({'params': params}, random_images(2), train=False)
  np.testing.assert_allclose(probe.logits, logits, rtol=1e-5, atol=1e-6)


def test_rollout_of_identity_attention_is_identity():
  identity = np.broadcast_to(np.eye(5), (2, 3, 5, 5))  # batch 2, 3 heads.
  rollout = analysis.attention_rollout([identity] * 4)
  np.testing.assert_allclose(rollout, np.broadcast_to(np.eye(5), (2, 5, 5)))


def test_rollout_mixes_heads_adds_the_residual_and_multiplies_layers():
  first = random_attention((3, 6, 6), seed=1)
  second = random_attention((3, 6, 6), seed=2)
  one_layer = lambda a: (a.mean(0) + np.eye(6)) / 2  # Rows then sum to 2.
  np.testing.assert_allclose(analysis.attention_rollout([first]),
                             one_layer(first))
  rollout = analysis.attention_rollout([first, second])
  np.testing.assert_allclose(rollout, one_layer(second) @ one_layer(first))
  np.testing.assert_allclose(rollout.sum(-1), 1.0)
  assert np.all(np.isfinite(rollout)) and np.all(rollout >= 0)


def test_rollout_across_token_counts_is_a_clear_error():
  with pytest.raises(analysis.VisualizationError, match=r'\[17, 5\]'):
    analysis.attention_rollout(
        [random_attention((2, 17, 17)),
         random_attention((2, 5, 5))])


def test_no_attention_is_a_clear_error():
  with pytest.raises(analysis.VisualizationError, match='no self-attention'):
    analysis.attention_rollout([])


def test_patch_relevance_reads_the_class_row_or_the_mean_of_patch_rows():
  rollout = np.arange(25.0).reshape(5, 5)
  np.testing.assert_array_equal(
      analysis.patch_relevance(rollout, (2, 2), num_prefix=1),
      [[1, 2], [3, 4]])
  gap = np.arange(16.0).reshape(4, 4)
  np.testing.assert_array_equal(
      analysis.patch_relevance(gap, (2, 2), num_prefix=0),
      gap.mean(0).reshape(2, 2))


def test_mean_attention_distance_of_known_patterns():
  # 2x2 grid of 8-pixel patches plus a class token.
  grid, patch = (2, 2), 8
  self_only = np.zeros((1, 2, 5, 5))
  self_only[:, :, np.arange(5), np.arange(5)] = 1.0
  # Every patch attends half to the class token, half to the top-left patch:
  # the class token is dropped and the rest renormalised.
  to_corner = np.zeros((1, 2, 5, 5))
  to_corner[:, :, :, 0] = 0.5
  to_corner[:, :, :, 1] = 0.5
  distances = analysis.mean_attention_distance(
      [self_only, to_corner], grid, patch, num_prefix=1)
  np.testing.assert_allclose(distances[0], [0.0, 0.0])
  expected = (0 + 8 + 8 + 8 * np.sqrt(2)) / 4
  np.testing.assert_allclose(distances[1], [expected, expected])


def test_mean_attention_distance_follows_a_pooled_grid():
  # A staged model's later layer: 4x4 input grid pooled to 2x2, no prefix.
  to_corner = np.zeros((3, 4, 4))
  to_corner[:, :, 0] = 1.0
  (distance,) = analysis.mean_attention_distance(
      [to_corner], (4, 4), 4, num_prefix=0)
  # Pooled patches are 8 pixels apart.
  np.testing.assert_allclose(distance, (0 + 8 + 8 + 8 * np.sqrt(2)) / 4)


def test_patch_filter_pcs_reconstruct_the_kernel():
  kernel = np.random.RandomState(0).randn(4, 4, 3, 20)
  pcs = analysis.patch_filter_pcs(kernel, n=1000)
  n = len(pcs.components)
  assert n == 19  # 20 centred filters span 19 dimensions.
  flat = pcs.components.reshape(n, -1)
  np.testing.assert_allclose(flat @ flat.T, np.eye(n), atol=1e-10)
  reconstructed = pcs.mean.reshape(-1) + pcs.coefficients @ flat
  np.testing.assert_allclose(reconstructed, kernel.reshape(-1, 20).T,
                             atol=1e-10)
  assert np.all(np.diff(pcs.explained_variance_ratio) <= 1e-12)
  np.testing.assert_allclose(pcs.explained_variance_ratio.sum(), 1.0)


def test_patch_filter_pcs_keeps_the_leading_components():
  kernel = np.random.RandomState(1).randn(2, 2, 3, 64)
  everything = analysis.patch_filter_pcs(kernel, n=1000)
  first = analysis.patch_filter_pcs(kernel, n=5)
  assert first.components.shape == (5, 2, 2, 3)
  assert len(everything.components) == 12  # 2 * 2 * 3 pixel dimensions.
  # Components are defined up to sign.
  np.testing.assert_allclose(np.abs(first.components),
                             np.abs(everything.components[:5]), atol=1e-8)
  np.testing.assert_allclose(first.explained_variance_ratio,
                             everything.explained_variance_ratio[:5])


def test_posemb_similarity():
  posemb = np.random.RandomState(0).randn(1, 1 + 3 * 4, 8)
  similarity = analysis.posemb_similarity(posemb, (3, 4), has_class_token=True)
  assert similarity.shape == (3, 4, 3, 4)
  flat = similarity.reshape(12, 12)
  np.testing.assert_allclose(np.diag(flat), 1.0)
  np.testing.assert_allclose(flat, flat.T)
  unit = posemb[0, 1:] / np.linalg.norm(posemb[0, 1:], axis=-1, keepdims=True)
  np.testing.assert_allclose(similarity[1, 2, 0, 3], unit[6] @ unit[3])
  with pytest.raises(analysis.VisualizationError, match='classifier'):
    analysis.posemb_similarity(posemb, None, has_class_token=False)


@pytest.mark.parametrize('classifier', ['token', 'gap'])
def test_figure_functions_return_rgb_images(classifier):
  _, model, params = tiny_vit(classifier)
  images = random_images(2)
  probe = probe_lib.probe(model, params, images)
  prefix = probe.num_prefix(classifier)
  assert prefix == (1 if classifier == 'token' else 0)
  one = [a[0] for a in probe.attentions]
  distances = analysis.mean_attention_distance(probe.attentions, (4, 4), 4,
                                               prefix)
  assert all(d.shape == (2,) and np.all(np.isfinite(d)) for d in distances)
  relevance = analysis.patch_relevance(analysis.attention_rollout(one), (4, 4),
                                       prefix)
  assert relevance.shape == (4, 4) and np.all(np.isfinite(relevance))
  for figure in [
      drawing.attention_maps_figure(images[0], one, (4, 4), prefix),
      drawing.attention_rollout_figure(images[0], one, (4, 4), prefix),
      drawing.patch_filters_figure(params['embedding']['kernel']),
      drawing.posemb_similarity_figure(
          params['Transformer']['posembed_input']['pos_embedding'], (4, 4),
          classifier == 'token'),
      drawing.attention_distance_figure(distances),
      drawing.embedding_activations_figure(images[0],
                                           probe.patch_embeddings[0]),
  ]:
    assert_rgb_figure(figure)


def test_attention_maps_figure_takes_layers_of_fewer_tokens():
  image = random_images(1)[0]
  layers = [random_attention((2, 17, 17)), random_attention((4, 5, 5))]
  assert_rgb_figure(drawing.attention_maps_figure(image, layers, (4, 4), 1))


@pytest.mark.parametrize('classifier', ['token', 'gap'])
def test_summary_images_gives_every_figure(classifier):
  config, model, params = tiny_vit(classifier)
  figures = probe_lib.summary_images(model, params, random_images(3), config)
  assert set(figures) == {'attention_maps', 'attention_rollout',
                          'patch_filters', 'posemb_similarity',
                          'attention_distance', 'embedding_activations'}
  for figure in figures.values():
    assert_rgb_figure(figure)


def test_model_without_attention_gets_the_figures_it_has():
  config = {'patches': {'size': (4, 4)}, 'transformer': None,
            'hidden_size': 16, 'classifier': 'gap'}
  model, params = init(config)
  figures = probe_lib.summary_images(model, params, random_images(1), config)
  assert set(figures) == {'patch_filters', 'embedding_activations'}
  probe = probe_lib.probe(model, params, random_images(1))
  with pytest.raises(analysis.VisualizationError, match='no self-attention'):
    drawing.attention_maps_figure(
        random_images(1)[0], probe.attentions, (4, 4), 0)


def test_filters_of_a_hybrid_are_not_shown_as_rgb():
  with pytest.raises(analysis.VisualizationError, match='ResNet'):
    drawing.patch_filters_figure(np.zeros((1, 1, 64, 16)))


@pytest.mark.slow
def test_cli_writes_the_figures_of_an_npz_and_reports_bad_files(tmp_path):
  config, _, params = tiny_vit()
  npz.save(params, tmp_path / 'model.npz')
  (tmp_path / 'tiny.py').write_text(
      'import ml_collections\n'
      'def get_config():\n'
      f'  return ml_collections.ConfigDict({{"model": {config.to_dict()!r},'
      ' "pp": {"crop": 16}})\n')
  rng = np.random.RandomState(0)
  Image.fromarray(rng.randint(0, 256, (20, 20, 3), np.uint8)).save(
      tmp_path / 'cat.png')
  (tmp_path / 'notes.png').write_text('not an image')
  out = tmp_path / 'out'
  result = subprocess.run(
      [sys.executable, '-m', 'vit_flax.visualize',
       f'--checkpoint={tmp_path / "model.npz"}',
       f'--config={tmp_path / "tiny.py"}', f'--out={out}',
       str(tmp_path / 'cat.png'), str(tmp_path / 'notes.png')],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 1, result.stderr
  assert 'notes.png is not an image' in result.stderr
  written = sorted(os.listdir(out))
  assert written == sorted([
      'patch_filters.png', 'posemb_similarity.png', 'attention_distance.png',
      'cat_attention_maps.png', 'cat_attention_rollout.png',
      'cat_embedding_activations.png'])
  image = np.asarray(Image.open(out / 'cat_attention_rollout.png'))
  assert image.ndim == 3 and image.shape[-1] == 3


# Models with the small-data options.


def small_data_vit(transformer=None, **overrides):
  config = tiny_model_config(**overrides)
  config.transformer.update(transformer or {})
  return (config,) + init(config)


ALL_FIGURES = {'attention_maps', 'attention_rollout', 'patch_filters',
               'posemb_similarity', 'attention_distance',
               'embedding_activations'}


def test_summary_images_of_an_lsa_model():
  config, model, params = small_data_vit({'attention': 'lsa'})
  figures = probe_lib.summary_images(model, params, random_images(2), config)
  assert set(figures) == ALL_FIGURES
  probe = probe_lib.probe(model, params, random_images(1))
  for weights in probe.attentions:
    assert np.all(np.diagonal(weights, axis1=-2, axis2=-1) == 0.0)


def test_distilled_model_reads_the_class_token_behind_two_prefix_tokens():
  config, model, params = small_data_vit(classifier='token_distill')
  images = random_images(2)
  probe = probe_lib.probe(model, params, images)
  assert probe.attentions[0].shape == (2, 2, 18, 18)
  assert probe.num_prefix('token_distill') == 2
  one = [a[0] for a in probe.attentions]
  np.testing.assert_allclose(
      analysis.head_maps(one[0], (4, 4), 2),
      np.asarray(one[0])[:, 0, 2:].reshape(2, 4, 4))
  relevance = analysis.patch_relevance(analysis.attention_rollout(one), (4, 4),
                                       2)
  assert relevance.shape == (4, 4)
  posemb = params['Transformer']['posembed_input']['pos_embedding']
  similarity = analysis.posemb_similarity(posemb, None, 2)
  assert similarity.shape == (4, 4, 4, 4)
  figures = probe_lib.summary_images(model, params, images, config)
  assert set(figures) == ALL_FIGURES


@pytest.mark.parametrize('overrides,skipped,reason', [
    ({'patch_embedding': 'spt'}, 'patch_filters', 'Shifted Patch'),
    ({'posemb': 'sincos2d'}, 'posemb_similarity', "posemb='sincos2d'"),
])
def test_figures_an_option_lacks_are_skipped_with_the_reason(
    overrides, skipped, reason):
  config, model, params = small_data_vit(**overrides)
  figures, reasons = probe_lib.build_figures(probe_lib.param_figures(
      params, 'token', config.get('posemb', 'learned')))
  assert set(reasons) == {skipped} and reason in reasons[skipped]
  summary = probe_lib.summary_images(model, params, random_images(1), config)
  assert set(summary) == ALL_FIGURES - {skipped}
  assert set(figures) | {skipped} == {'patch_filters', 'posemb_similarity'}

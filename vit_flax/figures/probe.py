"""One forward pass that keeps a model's attention weights and patch
embeddings, and the figures built from it: `summary_images` (what the
training loop writes to TensorBoard at each evaluation) and the builders
the `visualize` command runs.
"""

import dataclasses
import inspect
import math
from typing import Any, Dict, List, Mapping, Optional, Tuple

from absl import logging
import jax
import numpy as np

from vit_flax.figures import analysis
from vit_flax.figures import drawing
from vit_flax.models import vit
from vit_flax.weights import npz

# Top-level modules that embed patches: ViT's conv, Shifted Patch
# Tokenization, the conv tokenizers (CCT's `tokenizer`, the early-convolution
# `conv_stem`), and MLP-Mixer's `stem`.
PATCH_EMBEDDINGS = ('embedding', 'spt', 'tokenizer', 'conv_stem', 'stem')


# The model.


@dataclasses.dataclass
class Probe:
  """What one forward pass reveals about some images."""
  logits: np.ndarray
  attentions: List[np.ndarray]  # Per layer, (batch, heads, tokens, tokens).
  patch_embeddings: Optional[np.ndarray]  # (batch, h, w, hidden), if any.

  def grid_shape(self) -> analysis.GridShape:
    """The input patch grid; a square of the first layer's tokens otherwise."""
    if self.patch_embeddings is not None:
      return tuple(self.patch_embeddings.shape[1:3])
    analysis.require_attentions(self.attentions)
    side = math.isqrt(self.attentions[0].shape[-1])
    return side, side

  def num_prefix(self, classifier: str) -> int:
    """Prefix tokens: read off the first layer when the grid is known."""
    if self.patch_embeddings is not None and self.attentions:
      height, width = self.grid_shape()
      return self.attentions[0].shape[-1] - height * width
    return vit.num_prefix_tokens(classifier)


def _is_patch_embedding(module, method_name: str) -> bool:
  return (len(module.path) == 1 and module.path[0] in PATCH_EMBEDDINGS and
          method_name == '__call__')


def _patch_embedding_params(params) -> Mapping[str, Any]:
  for name in PATCH_EMBEDDINGS:
    if name in params:
      return params[name]
  return {}


def probe(model, params, images) -> Probe:
  """One forward pass, keeping attention weights and patch embeddings.

  Models without attention (whose `__call__` takes no `sow_weights`) give an
  empty `attentions`; those without a top-level patch embedding (one of
  `PATCH_EMBEDDINGS`) give no `patch_embeddings`.
  """
  kwargs = {}
  if 'sow_weights' in inspect.signature(model.__call__).parameters:
    kwargs['sow_weights'] = True
  logits, state = model.apply(
      {'params': params}, images, train=False, mutable=['intermediates'],
      capture_intermediates=_is_patch_embedding, **kwargs)
  intermediates = state.get('intermediates', {})
  embeddings = _patch_embedding_params(intermediates).get('__call__')
  return Probe(
      logits=np.asarray(jax.device_get(logits)),
      attentions=[a for _, a in analysis.collect_attentions(intermediates)],
      patch_embeddings=(None if embeddings is None else
                        np.asarray(jax.device_get(embeddings[0]))))


def image_figures(image: np.ndarray, probe_result: Probe, index: int,
                  classifier: str) -> Dict[str, Any]:
  """Builders of the figures of image `index` of a probe, by name."""
  grid = probe_result.grid_shape
  prefix = lambda: probe_result.num_prefix(classifier)
  one = lambda: [a[index] for a in probe_result.attentions]

  def activations():
    if probe_result.patch_embeddings is None:
      raise analysis.VisualizationError(
          'The model has no top-level patch embedding (one of '
          f'{PATCH_EMBEDDINGS}), so there are no patch-embedding '
          'activations to show.')
    return drawing.embedding_activations_figure(
        image, probe_result.patch_embeddings[index])

  return {
      'attention_maps':
          lambda: drawing.attention_maps_figure(image, one(), grid(), prefix()),
      'attention_rollout':
          lambda: drawing.attention_rollout_figure(image, one(), grid(), prefix(
          )),
      'embedding_activations':
          activations,
  }


def attention_distance_for(probe_result: Probe, image_size: analysis.GridShape,
                           classifier: str) -> np.ndarray:
  """The attention-distance figure over every image of a probe."""
  analysis.require_attentions(probe_result.attentions)
  grid = probe_result.grid_shape()
  patch_size = (image_size[0] / grid[0], image_size[1] / grid[1])
  return drawing.attention_distance_figure(analysis.mean_attention_distance(
      probe_result.attentions, grid, patch_size,
      probe_result.num_prefix(classifier)))


def param_figures(params, classifier: str,
                  posemb: str = 'learned') -> Dict[str, Any]:
  """Builders of the figures that need only the parameters, by name.

  `posemb`: the model's `posemb` ('learned' or 'sincos2d').
  """

  def filters():
    if 'spt' in params:
      raise analysis.VisualizationError(
          'The model embeds patches with Shifted Patch Tokenization (spt): '
          'a LayerNorm of the patch and four shifted copies comes before '
          'its linear map, so the map has no RGB filters to show.')
    embedding = _patch_embedding_params(params)
    # A conv tokenizer's filters that read the pixels: its first conv's.
    kernel = embedding.get('conv_0', embedding).get('kernel')
    if kernel is None:
      raise analysis.VisualizationError(
          'The model has no patch-embedding kernel (`embedding/kernel`, '
          '`tokenizer/conv_0/kernel`, `conv_stem/conv_0/kernel` or '
          '`stem/kernel`), so there are no embedding filters to show.')
    return drawing.patch_filters_figure(np.asarray(jax.device_get(kernel)))

  def positions():
    if posemb == 'sincos2d':
      raise analysis.VisualizationError(
          "The model's position embeddings are the fixed 2-D sin-cos ones "
          "(posemb='sincos2d'), not learned, so their similarity shows "
          'nothing the training did.')
    table = npz.find_param(params, 'pos_embedding')
    if table is None:
      raise analysis.VisualizationError(
          'The model has no `pos_embedding` parameter (no learned position '
          'embeddings), so there is no position similarity to show.')
    return drawing.posemb_similarity_figure(table, None,
                                            vit.num_prefix_tokens(classifier))

  return {'patch_filters': filters, 'posemb_similarity': positions}


def build_figures(builders: Mapping[str, Any]) -> Tuple[Dict[str, np.ndarray],
                                                        Dict[str, str]]:
  """Runs figure builders: (figures, reasons of those the model lacks)."""
  figures, skipped = {}, {}
  for name, build in builders.items():
    try:
      figures[name] = build()
    except analysis.VisualizationError as e:
      skipped[name] = str(e)
  return figures, skipped


def summary_images(model, params, images,
                   model_config) -> Dict[str, np.ndarray]:
  """The figures of the first of `images`, for TensorBoard; one forward pass.

  Args:
    model: the flax module.
    params: its parameters.
    images: a batch of preprocessed images (batch, height, width, 3).
    model_config: `config.model` (its `classifier` is read).

  Returns:
    Figure name -> RGB uint8 (height, width, 3) array. Figures the model
    cannot give (e.g. attention of a ResNet) are left out, with a log line.
  """
  classifier = model_config.get('classifier', 'token')
  image = np.asarray(jax.device_get(images[:1]))
  probe_result = probe(model, params, image)
  builders = dict(param_figures(params, classifier,
                                model_config.get('posemb', 'learned')))
  builders.update(image_figures(image[0], probe_result, 0, classifier))
  builders['attention_distance'] = lambda: attention_distance_for(
      probe_result, image.shape[1:3], classifier)
  figures, skipped = build_figures(builders)
  for name, reason in skipped.items():
    logging.info('Summary figure %s skipped: %s', name, reason)
  return figures

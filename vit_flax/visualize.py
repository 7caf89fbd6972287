"""Figures that look inside a ViT: attention, embedding filters, positions.

Pure functions compute each quantity (numpy in, numpy out) and render each
figure to an RGB uint8 array with matplotlib's Agg backend (never pyplot's
global state), so they run headless, in tests and in the training loop, which
writes `summary_images(...)` to TensorBoard at each evaluation. The CLI writes
the same figures as PNGs, from a run or from an official `.npz`:

  python -m vit_flax.visualize --workdir=RUN --out=DIR [images...]
  python -m vit_flax.visualize --checkpoint=ViT-B_16.npz --model=ViT-B_16 \
      --out=DIR cat.jpg
"""

import dataclasses
import inspect
import math
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging
from etils import epath
import jax
import matplotlib
import matplotlib.figure
import matplotlib.ticker
import numpy as np
import scipy.linalg

from vit_flax import checkpoint
from vit_flax import errors
from vit_flax import host
from vit_flax import inference
from vit_flax import models
from vit_flax import plotting

FLAGS = flags.FLAGS
GridShape = Tuple[int, int]
# The paper's Figure 7 shows this many principal components of the filters.
NUM_FILTER_PCS = 28
# Top-level modules that embed patches: ViT's conv or Shifted Patch
# Tokenization, and MLP-Mixer's `stem`.
PATCH_EMBEDDINGS = ('embedding', 'spt', 'stem')


class VisualizationError(errors.UserError):
  """A figure the model cannot give (no attention, no patch embedding, ...)."""


# Quantities.


def collect_attentions(
    intermediates: Mapping[str, Any]) -> List[Tuple[str, np.ndarray]]:
  """Sown attention weights in layer order, as (module path, weights).

  Walks the whole 'intermediates' tree, so blocks nested in stages
  (`Transformer/stage_1/encoderblock_0/...`) are found too; siblings are
  ordered by their numbers, as jit returns dicts sorted as strings.

  Args:
    intermediates: the 'intermediates' collection of an `apply` with
      `sow_weights=True`.

  Returns:
    One (path, (batch, heads, queries, keys) array) per attention layer.
  """
  found = []

  def walk(tree, path):
    for key in sorted(tree, key=checkpoint.natural_key):
      value = tree[key]
      if key == 'attention_weights':
        found.extend(('/'.join(path), np.asarray(jax.device_get(weights)))
                     for weights in value)
      elif isinstance(value, Mapping):
        walk(value, path + (key,))

  walk(intermediates, ())
  return found


def _require_attentions(attentions: Sequence[np.ndarray]):
  if len(attentions) == 0:  # A list, or an array of layers.
    raise VisualizationError(
        'The model sowed no attention weights: it has no self-attention '
        '(e.g. a ResNet or Mixer baseline), so attention maps, rollout and '
        'attention distances do not exist for it. The patch-filter and '
        'position-embedding figures may still apply.')


def attention_rollout(attentions: Sequence[np.ndarray]) -> np.ndarray:
  """Attention rollout (Abnar & Zuidema 2020) across all given layers.

  Each layer's heads are averaged, the residual connection is added as the
  identity and the rows renormalised; the layers' matrices are then
  multiplied, last layer leftmost.

  Args:
    attentions: per layer in order, weights of shape (..., heads, tokens,
      tokens), rows (queries) summing to one.

  Returns:
    (..., tokens, tokens): row i says how much output token i draws from
    each input token.
  """
  _require_attentions(attentions)
  counts = [np.shape(a)[-1] for a in attentions]
  if len(set(counts)) > 1:
    raise VisualizationError(
        f'Attention rollout multiplies the attention matrices of consecutive '
        f'layers, so they must have one token count; these layers have '
        f'{counts}. Roll out a group of layers with equal token counts (one '
        'stage of a staged model).')
  rollout = None
  for weights in attentions:
    mixed = np.asarray(weights, np.float64).mean(axis=-3)
    mixed = mixed + np.eye(mixed.shape[-1])
    mixed = mixed / mixed.sum(axis=-1, keepdims=True)
    rollout = mixed if rollout is None else mixed @ rollout
  return rollout


def patch_relevance(rollout: np.ndarray, grid_shape: GridShape,
                    num_prefix: int) -> np.ndarray:
  """(..., h, w) share of each patch in what the classifier reads.

  With a class token that is its row of the rollout; with global average
  pooling (no prefix token) the mean of the patch rows, which is what the
  pooling averages.
  """
  if num_prefix:
    row = rollout[..., 0, num_prefix:]
  else:
    row = rollout.mean(axis=-2)
  return row.reshape(*row.shape[:-1], *grid_shape)


def layer_grid(num_tokens: int, num_prefix: int,
               grid_shape: GridShape) -> Tuple[GridShape, int]:
  """The patch grid of a layer holding `num_tokens` tokens, and its stride.

  A layer's grid is the input grid pooled by an integer factor (1 for a
  plain ViT; more after a staged model's downsampling).
  """
  patches = num_tokens - num_prefix
  height, width = grid_shape
  for factor in range(1, max(height, width) + 1):
    grid = (-(-height // factor), -(-width // factor))
    if grid[0] * grid[1] == patches:
      return grid, factor
  raise VisualizationError(
      f'A layer with {num_tokens} tokens ({num_prefix} prefix) holds no '
      f'patch grid pooled from the input grid {grid_shape}; check the '
      'classifier (token vs gap) matches the model.')


def head_maps(attentions: np.ndarray, grid_shape: GridShape,
              num_prefix: int) -> np.ndarray:
  """(heads, h, w) attention of what the classifier reads, per head.

  The class token's attention over the patches; without a class token, the
  attention each patch receives, averaged over the patch queries.
  """
  attentions = np.asarray(attentions, np.float64)
  if num_prefix:
    maps = attentions[:, 0, num_prefix:]
  else:
    maps = attentions[:, num_prefix:, num_prefix:].mean(axis=1)
  return maps.reshape(len(maps), *grid_shape)


def mean_attention_distance(attentions: Sequence[np.ndarray],
                            grid_shape: GridShape, patch_size: Any,
                            num_prefix: int) -> List[np.ndarray]:
  """Mean attention distance in pixels (the paper's Figure 7, right).

  For each head: the attention-weighted distance between the centres of
  query and key patches, averaged over the query patches and the images.
  Prefix (class) tokens are dropped as queries and keys, and each query's
  weights renormalised over the patches, so a head attending mostly to the
  class token is not mistaken for a local one.

  Args:
    attentions: per layer, weights of shape (batch, heads, tokens, tokens)
      or (heads, tokens, tokens).
    grid_shape: the patch grid of the input (layers may pool it).
    patch_size: pixels per patch of the input grid, an int or (h, w).
    num_prefix: prefix tokens ahead of the patches (1 with a class token).

  Returns:
    Per layer, a (heads,) array of distances in pixels.
  """
  _require_attentions(attentions)
  patch_h, patch_w = (patch_size if isinstance(patch_size, (tuple, list))
                      else (patch_size, patch_size))
  distances = []
  for weights in attentions:
    weights = np.asarray(weights, np.float64)
    if weights.ndim == 3:
      weights = weights[None]
    grid, factor = layer_grid(weights.shape[-1], num_prefix, grid_shape)
    weights = weights[..., num_prefix:, num_prefix:]
    weights = weights / np.maximum(weights.sum(-1, keepdims=True), 1e-12)
    rows, cols = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]),
                             indexing='ij')
    centres = np.stack([rows.ravel() * patch_h * factor,
                        cols.ravel() * patch_w * factor], axis=-1)
    pairwise = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    distances.append((weights * pairwise).sum(-1).mean(axis=(0, 2)))
  return distances


@dataclasses.dataclass
class FilterPCs:
  """Principal components of patch-embedding filters.

  `mean + coefficients @ components` gives back the filters (exactly when
  every component is kept).
  """
  components: np.ndarray  # (n, patch_h, patch_w, channels), orthonormal.
  mean: np.ndarray  # (patch_h, patch_w, channels), the mean filter.
  coefficients: np.ndarray  # (hidden, n): each filter in the components.
  explained_variance_ratio: np.ndarray  # (n,), decreasing.


def patch_filter_pcs(kernel: np.ndarray, n: int = NUM_FILTER_PCS) -> FilterPCs:
  """The first `n` principal components of a (ph, pw, c, hidden) kernel.

  Each of the `hidden` output filters is one sample. The components are the
  top eigenvectors of the smaller of the covariance and Gram matrices, many
  times faster than an SVD of the filters; `n` is capped at the number of
  components there are.
  """
  kernel = np.asarray(kernel, np.float64)
  if kernel.ndim != 4:
    raise VisualizationError(
        f'A patch-embedding kernel has shape (patch_h, patch_w, channels, '
        f'hidden); got {kernel.shape}.')
  patch_h, patch_w, channels, hidden = kernel.shape
  filters = kernel.reshape(-1, hidden).T
  mean = filters.mean(axis=0)
  centred = filters - mean
  total_variance = float(np.sum(centred**2))
  gram_side = min(centred.shape)
  # Only the top `n` eigenpairs are computed, much faster than all of them.
  top = [max(gram_side - n, 0), gram_side - 1]
  if centred.shape[1] <= centred.shape[0]:
    variance, vectors = scipy.linalg.eigh(centred.T @ centred,
                                          subset_by_index=top)
    components = vectors.T
  else:
    # More pixels than filters: components from the filters' Gram matrix.
    variance, vectors = scipy.linalg.eigh(centred @ centred.T,
                                          subset_by_index=top)
    kept = variance > total_variance * 1e-12
    variance, vectors = variance[kept], vectors[:, kept]
    components = (centred.T @ vectors / np.sqrt(variance)).T
  order = np.argsort(variance)[::-1]
  variance = np.clip(variance[order], 0.0, None)
  components = components[order]
  n = len(components)
  return FilterPCs(
      components=components.reshape(n, patch_h, patch_w, channels),
      mean=mean.reshape(patch_h, patch_w, channels),
      coefficients=centred @ components.T,
      explained_variance_ratio=variance / max(total_variance,
                                              np.finfo(np.float64).tiny))


def posemb_similarity(posemb: np.ndarray, grid_shape: Optional[GridShape],
                      num_prefix: int = 0, *,
                      has_class_token: Optional[bool] = None) -> np.ndarray:
  """Cosine similarity of position embeddings, (h, w, h, w).

  `[i, j]` is the similarity map of patch (i, j) with every patch. A
  `grid_shape` of None takes the stored grid as square. The first
  `num_prefix` rows (class and distillation tokens; `has_class_token`: one)
  are dropped.
  """
  if has_class_token is not None:
    num_prefix = int(has_class_token)
  num_prefix = int(num_prefix)
  posemb = np.asarray(posemb, np.float64)
  if posemb.ndim == 3:
    posemb = posemb[0]
  posemb = posemb[num_prefix:]
  if grid_shape is None:
    side = math.isqrt(len(posemb))
    grid_shape = (side, side)
  if grid_shape[0] * grid_shape[1] != len(posemb):
    raise VisualizationError(
        f'{len(posemb)} patch position embeddings ({num_prefix} prefix '
        f'tokens dropped) do not fill a {grid_shape} grid; check the '
        'classifier (token, token_distill or gap) matches the checkpoint.')
  unit = posemb / np.maximum(np.linalg.norm(posemb, axis=-1, keepdims=True),
                             1e-12)
  return (unit @ unit.T).reshape(*grid_shape, *grid_shape)


# Rendering.


# Figures: each returns an RGB uint8 (height, width, 3) array.


def attention_maps_figure(image: np.ndarray, attentions: Sequence[np.ndarray],
                          grid_shape: GridShape,
                          num_prefix: int) -> np.ndarray:
  """Per layer (rows) and head (columns), the attention the classifier reads.

  Args:
    image: the input image, (height, width, 3) in [-1, 1].
    attentions: per layer, (heads, tokens, tokens) weights for this image.
    grid_shape: the input patch grid.
    num_prefix: prefix tokens (1: class token, whose attention is shown;
      0: the attention each patch receives, averaged over patch queries).

  Returns:
    The figure; each map is scaled to its own range.
  """
  _require_attentions(attentions)
  max_heads = max(np.shape(a)[0] for a in attentions)
  tiles = np.full((len(attentions), max_heads) + tuple(grid_shape), np.nan)
  for layer, weights in enumerate(attentions):
    grid, factor = layer_grid(np.shape(weights)[-1], num_prefix, grid_shape)
    for head, head_map in enumerate(head_maps(weights, grid, num_prefix)):
      tiles[layer, head] = plotting.upsample(plotting.normalize(head_map),
                                             factor, grid_shape)
  cmap = matplotlib.colormaps['inferno'].with_extremes(bad='white')
  rows, cols = tiles.shape[:2]
  figure = plotting.new_figure(3.2 + 0.5 * cols, max(2.6, 1.0 + 0.5 * rows))
  image_axes, maps_axes = figure.subplots(
      1, 2, gridspec_kw={'width_ratios': [2.4, 0.5 * cols]})
  image_axes.imshow(plotting.to_display(image))
  image_axes.set_title('input', fontsize=8)
  plotting.hide_ticks(image_axes)
  shown = maps_axes.imshow(plotting.mosaic(tiles), cmap=cmap, vmin=0, vmax=1,
                           interpolation='nearest')
  colorbar = figure.colorbar(shown, ax=maps_axes, fraction=0.046, pad=0.04)
  colorbar.set_label('attention, each map scaled to its own min-max',
                     fontsize=7)
  colorbar.ax.tick_params(labelsize=6)
  height, width = grid_shape
  maps_axes.set_xticks([(width + 1) * c + (width - 1) / 2 for c in range(cols)],
                       [str(c) for c in range(cols)], fontsize=7)
  maps_axes.set_yticks([(height + 1) * r + (height - 1) / 2
                        for r in range(rows)],
                       [str(r) for r in range(rows)], fontsize=7)
  maps_axes.set_xlabel('head', fontsize=8)
  maps_axes.set_ylabel('layer', fontsize=8)
  what = 'class-token attention' if num_prefix else (
      'attention received, mean over patch queries')
  figure.suptitle(f'Attention maps per layer and head ({what})', fontsize=9)
  figure.tight_layout()
  return plotting.figure_to_array(figure)


def attention_rollout_figure(image: np.ndarray,
                             attentions: Sequence[np.ndarray],
                             grid_shape: GridShape,
                             num_prefix: int) -> np.ndarray:
  """The input, its attention rollout, and the rollout overlaid on it.

  Args: as `attention_maps_figure`.
  """
  relevance = patch_relevance(attention_rollout(attentions), grid_shape,
                              num_prefix)
  relevance = plotting.normalize(relevance)
  height, width = np.shape(image)[:2]
  figure = plotting.new_figure(8.2, 2.8)
  axes = figure.subplots(1, 3)
  axes[0].imshow(plotting.to_display(image))
  axes[0].set_title('input', fontsize=9)
  shown = axes[1].imshow(relevance, cmap='inferno', vmin=0, vmax=1,
                         interpolation='nearest')
  axes[1].set_title('attention rollout', fontsize=9)
  colorbar = figure.colorbar(shown, ax=axes[1:], fraction=0.046, pad=0.04)
  colorbar.set_label('relevance, scaled to its min-max', fontsize=7)
  colorbar.ax.tick_params(labelsize=6)
  axes[2].imshow(plotting.to_display(image))
  axes[2].imshow(relevance, cmap='inferno', alpha=0.6, vmin=0, vmax=1,
                 interpolation='bilinear',
                 extent=(-0.5, width - 0.5, height - 0.5, -0.5))
  axes[2].set_title('overlay: class-token row' if num_prefix else
                    'overlay: mean of patch rows (gap)', fontsize=9)
  for a in axes:
    plotting.hide_ticks(a)
  return plotting.figure_to_array(figure)


def patch_filters_figure(kernel: np.ndarray,
                         n: int = NUM_FILTER_PCS) -> np.ndarray:
  """The first `n` principal components of the RGB embedding filters.

  The paper's Figure 7 (left); each component is scaled to its own range.
  """
  kernel = np.asarray(kernel)
  if kernel.ndim != 4 or kernel.shape[2] != 3:
    raise VisualizationError(
        f'Patch-embedding filters can be shown as RGB patches only when they '
        f'read RGB pixels; this kernel has shape {kernel.shape} (a hybrid '
        'model embeds ResNet features, whose channels are not colours).')
  pcs = patch_filter_pcs(kernel, n)
  cols = min(7, len(pcs.components))
  rows = -(-len(pcs.components) // cols)
  tiles = np.ones((rows, cols) + pcs.components.shape[1:])
  for i, component in enumerate(pcs.components):
    tiles[i // cols, i % cols] = plotting.normalize(component)
  figure = plotting.new_figure(1.0 + 0.8 * cols, 0.8 + 0.8 * rows)
  axes = figure.subplots()
  axes.imshow(plotting.mosaic(tiles, fill=1.0), interpolation='nearest')
  plotting.hide_ticks(axes)
  axes.set_title(
      f'RGB embedding filters: first {len(pcs.components)} principal '
      f'components ({100 * pcs.explained_variance_ratio.sum():.0f}% of the '
      'variance)', fontsize=8)
  return plotting.figure_to_array(figure)


def posemb_similarity_figure(posemb: np.ndarray,
                             grid_shape: Optional[GridShape],
                             num_prefix: int = 0) -> np.ndarray:
  """Position-embedding similarity, one small map per patch (Figure 7, centre).

  Args: as `posemb_similarity`.
  """
  similarity = posemb_similarity(posemb, grid_shape, num_prefix)
  rows, cols = similarity.shape[:2]
  cmap = matplotlib.colormaps['viridis'].with_extremes(bad='white')
  figure = plotting.new_figure(6.0, 5.0)
  axes = figure.subplots()
  shown = axes.imshow(plotting.mosaic(similarity), cmap=cmap, vmin=-1, vmax=1,
                      interpolation='nearest')
  axes.set_xticks([(cols + 1) * c + (cols - 1) / 2 for c in range(cols)],
                  [str(c + 1) for c in range(cols)], fontsize=6)
  axes.set_yticks([(rows + 1) * r + (rows - 1) / 2 for r in range(rows)],
                  [str(r + 1) for r in range(rows)], fontsize=6)
  axes.set_xlabel('input patch column', fontsize=8)
  axes.set_ylabel('input patch row', fontsize=8)
  axes.set_title('Position embedding similarity', fontsize=9)
  colorbar = figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04)
  colorbar.set_label('cosine similarity', fontsize=8)
  figure.tight_layout()
  return plotting.figure_to_array(figure)


def attention_distance_figure(distances: Sequence[np.ndarray]) -> np.ndarray:
  """Mean attention distance per head against depth (Figure 7, right).

  Args:
    distances: per layer, a (heads,) array (`mean_attention_distance`).
  """
  _require_attentions(distances)
  figure = plotting.new_figure(5.4, 3.5)
  axes = figure.subplots()
  num_heads = max(len(heads) for heads in distances)
  colours = matplotlib.colormaps['tab20']
  for head in range(num_heads):
    layers = [layer for layer, heads in enumerate(distances)
              if head < len(heads)]
    axes.scatter(layers, [distances[layer][head] for layer in layers],
                 color=colours(head % 20), s=14, label=f'head {head}')
  axes.legend(fontsize=6, loc='center left', bbox_to_anchor=(1.0, 0.5),
              ncol=1 + num_heads // 16, frameon=False)
  axes.set_xlabel('network depth (layer)', fontsize=9)
  axes.set_ylabel('mean attention distance (pixels)', fontsize=9)
  axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  axes.set_ylim(0, 1.1 * max(float(np.max(h)) for h in distances) + 1e-6)
  axes.set_title('Mean attention distance per head', fontsize=9)
  figure.tight_layout()
  return plotting.figure_to_array(figure)


def embedding_activations_figure(image: np.ndarray, activations: np.ndarray,
                                 n: int = 16) -> np.ndarray:
  """The input and its patch-embedding activations, `n` channels.

  Args:
    image: the input image, (height, width, 3) in [-1, 1].
    activations: the patch embedding of that image, (h, w, hidden).
    n: channels shown: those varying most across the patches.
  """
  activations = np.asarray(activations, np.float64)
  if activations.ndim != 3:
    raise VisualizationError(
        f'Patch-embedding activations have shape (h, w, hidden); got '
        f'{activations.shape}.')
  n = min(n, activations.shape[-1])
  channels = np.sort(np.argsort(-activations.var(axis=(0, 1)))[:n])
  cols = math.ceil(math.sqrt(n))
  rows = -(-n // cols)
  tiles = np.full((rows, cols) + activations.shape[:2], np.nan)
  for i, channel in enumerate(channels):
    tiles[i // cols, i % cols] = plotting.normalize(activations[..., channel])
  cmap = matplotlib.colormaps['viridis'].with_extremes(bad='white')
  figure = plotting.new_figure(7.0, 3.6)
  image_axes, maps_axes = figure.subplots(1, 2)
  image_axes.imshow(plotting.to_display(image))
  image_axes.set_title('input', fontsize=9)
  maps_axes.imshow(plotting.mosaic(tiles), cmap=cmap, interpolation='nearest')
  maps_axes.set_title(f'patch embedding: {n} channels', fontsize=9)
  for a in (image_axes, maps_axes):
    plotting.hide_ticks(a)
  figure.tight_layout()
  return plotting.figure_to_array(figure)


# The model.


@dataclasses.dataclass
class Probe:
  """What one forward pass reveals about some images."""
  logits: np.ndarray
  attentions: List[np.ndarray]  # Per layer, (batch, heads, tokens, tokens).
  patch_embeddings: Optional[np.ndarray]  # (batch, h, w, hidden), if any.

  def grid_shape(self) -> GridShape:
    """The input patch grid; a square of the first layer's tokens otherwise."""
    if self.patch_embeddings is not None:
      return tuple(self.patch_embeddings.shape[1:3])
    _require_attentions(self.attentions)
    side = math.isqrt(self.attentions[0].shape[-1])
    return side, side

  def num_prefix(self, classifier: str) -> int:
    """Prefix tokens: read off the first layer when the grid is known."""
    if self.patch_embeddings is not None and self.attentions:
      height, width = self.grid_shape()
      return self.attentions[0].shape[-1] - height * width
    return models.num_prefix_tokens(classifier)


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
  empty `attentions`; those without a top-level patch embedding (`embedding`,
  `spt`, or a Mixer's `stem`) give no `patch_embeddings`.
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
      attentions=[a for _, a in collect_attentions(intermediates)],
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
      raise VisualizationError(
          'The model has no top-level patch embedding (an `embedding`, '
          '`spt` or `stem` module), so there are no patch-embedding '
          'activations to show.')
    return embedding_activations_figure(
        image, probe_result.patch_embeddings[index])

  return {
      'attention_maps':
          lambda: attention_maps_figure(image, one(), grid(), prefix()),
      'attention_rollout':
          lambda: attention_rollout_figure(image, one(), grid(), prefix()),
      'embedding_activations': activations,
  }


def attention_distance_for(probe_result: Probe, image_size: GridShape,
                           classifier: str) -> np.ndarray:
  """The attention-distance figure over every image of a probe."""
  _require_attentions(probe_result.attentions)
  grid = probe_result.grid_shape()
  patch_size = (image_size[0] / grid[0], image_size[1] / grid[1])
  return attention_distance_figure(mean_attention_distance(
      probe_result.attentions, grid, patch_size,
      probe_result.num_prefix(classifier)))


def param_figures(params, classifier: str,
                  posemb: str = 'learned') -> Dict[str, Any]:
  """Builders of the figures that need only the parameters, by name.

  `posemb`: the model's `posemb` ('learned' or 'sincos2d').
  """

  def filters():
    if 'spt' in params:
      raise VisualizationError(
          'The model embeds patches with Shifted Patch Tokenization (spt): '
          'a LayerNorm of the patch and four shifted copies comes before '
          'its linear map, so the map has no RGB filters to show.')
    kernel = _patch_embedding_params(params).get('kernel')
    if kernel is None:
      raise VisualizationError(
          'The model has no patch-embedding kernel (`embedding/kernel` or '
          '`stem/kernel`), so there are no embedding filters to show.')
    return patch_filters_figure(np.asarray(jax.device_get(kernel)))

  def positions():
    if posemb == 'sincos2d':
      raise VisualizationError(
          "The model's position embeddings are the fixed 2-D sin-cos ones "
          "(posemb='sincos2d'), not learned, so their similarity shows "
          'nothing the training did.')
    table = checkpoint.find_param(params, 'pos_embedding')
    if table is None:
      raise VisualizationError(
          'The model has no `pos_embedding` parameter (no learned position '
          'embeddings), so there is no position similarity to show.')
    return posemb_similarity_figure(table, None,
                                    models.num_prefix_tokens(classifier))

  return {'patch_filters': filters, 'posemb_similarity': positions}


def build_figures(builders: Mapping[str, Any]) -> Tuple[Dict[str, np.ndarray],
                                                        Dict[str, str]]:
  """Runs figure builders: (figures, reasons of those the model lacks)."""
  figures, skipped = {}, {}
  for name, build in builders.items():
    try:
      figures[name] = build()
    except VisualizationError as e:
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


# The command.


def probe_batches(model, params, images: np.ndarray,
                  batch_size: int) -> Probe:
  """`probe` in batches of `batch_size`, joined along the batch."""
  parts = [probe(model, params, images[i:i + batch_size])
           for i in range(0, len(images), batch_size)]
  embeddings = [p.patch_embeddings for p in parts]
  return Probe(
      logits=np.concatenate([p.logits for p in parts]),
      attentions=[np.concatenate(layer) for layer in
                  zip(*[p.attentions for p in parts])],
      patch_embeddings=(None if embeddings[0] is None else
                        np.concatenate(embeddings)))


def unique_names(paths: Sequence[str]) -> List[str]:
  """File stems, numbered where two files share one."""
  names = []
  for path in paths:
    name = epath.Path(path).stem
    names.append(name if name not in names else f'{name}_{len(names)}')
  return names


def define_flags():
  """The command's flags (`--help` lists the model flags too)."""
  inference.define_model_flags()
  flags.adopt_module_key_flags(inference)
  flags.DEFINE_string('out', None, 'Directory for the PNG figures.')
  flags.DEFINE_integer('batch_size', 8, 'Images per forward pass.')
  flags.mark_flags_as_required(['out'])


def main(argv):
  host.quiet_startup_logs()
  host.hide_gpus_from_tensorflow()
  try:
    loaded = inference.load_model_from_flags()
  except errors.UserError as e:
    sys.exit(f'Error: {e}')
  paths = argv[1:]
  good, images, failures = inference.load_images(paths, loaded.image_size,
                                                 loaded.crop_fraction)
  for _, message in failures:
    print(f'Error: {message}', file=sys.stderr)
  names = unique_names(good)
  if not paths:
    image = inference.first_eval_image(loaded.config, loaded.image_size,
                                       loaded.crop_fraction)
    if image is None:
      print('No image files given and no eval image of the run\'s dataset '
            'could be read: writing only the figures of the parameters.',
            file=sys.stderr)
    else:
      names, images = ['eval_image'], image[None]

  out = epath.Path(FLAGS.out)
  out.mkdir(parents=True, exist_ok=True)
  classifier = loaded.config.model.get('classifier', 'token')
  builders = param_figures(loaded.params, classifier,
                           loaded.config.model.get('posemb', 'learned'))
  if names:
    probe_result = probe_batches(loaded.model, loaded.params, images,
                                 FLAGS.batch_size)
    for i, name in enumerate(names):
      for figure, build in image_figures(images[i], probe_result, i,
                                         classifier).items():
        builders[f'{name}_{figure}'] = build
    builders['attention_distance'] = lambda: attention_distance_for(
        probe_result, images.shape[1:3], classifier)
  figures, skipped = build_figures(builders)
  for name, figure in figures.items():
    plotting.write_png(figure, out / f'{name}.png')
    print(f'Wrote {out / name}.png')
  for name, reason in skipped.items():
    print(f'Skipped {name}: {reason}', file=sys.stderr)
  if failures or not figures:
    sys.exit(1)


if __name__ == '__main__':
  define_flags()
  app.run(main)

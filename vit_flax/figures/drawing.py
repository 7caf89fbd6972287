"""The figures of `analysis`'s quantities, each rendered to an RGB uint8 array
with matplotlib's Agg backend (never pyplot's global state), so they run
headless, in tests and in the training loop.
"""

import math
from typing import Optional, Sequence

import matplotlib
import matplotlib.figure
import matplotlib.ticker
import numpy as np

from vit_flax.figures import analysis
from vit_flax.figures import plotting

# Rendering.


# Figures: each returns an RGB uint8 (height, width, 3) array.


def attention_maps_figure(image: np.ndarray, attentions: Sequence[np.ndarray],
                          grid_shape: analysis.GridShape,
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
  analysis.require_attentions(attentions)
  max_heads = max(np.shape(a)[0] for a in attentions)
  tiles = np.full((len(attentions), max_heads) + tuple(grid_shape), np.nan)
  for layer, weights in enumerate(attentions):
    grid, factor = analysis.layer_grid(
        np.shape(weights)[-1], num_prefix, grid_shape)
    for head, head_map in enumerate(
        analysis.head_maps(weights, grid, num_prefix)):
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
                             grid_shape: analysis.GridShape,
                             num_prefix: int) -> np.ndarray:
  """The input, its attention rollout, and the rollout overlaid on it.

  Args: as `attention_maps_figure`.
  """
  relevance = analysis.patch_relevance(analysis.attention_rollout(attentions),
                                       grid_shape, num_prefix)
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
                         n: int = analysis.NUM_FILTER_PCS) -> np.ndarray:
  """The first `n` principal components of the RGB embedding filters.

  The paper's Figure 7 (left); each component is scaled to its own range.
  """
  kernel = np.asarray(kernel)
  if kernel.ndim != 4 or kernel.shape[2] != 3:
    raise analysis.VisualizationError(
        f'Patch-embedding filters can be shown as RGB patches only when they '
        f'read RGB pixels; this kernel has shape {kernel.shape} (a hybrid '
        'model embeds ResNet features, whose channels are not colours).')
  pcs = analysis.patch_filter_pcs(kernel, n)
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
                             grid_shape: Optional[analysis.GridShape],
                             num_prefix: int = 0) -> np.ndarray:
  """Position-embedding similarity, one small map per patch (Figure 7, centre).

  Args: as `analysis.posemb_similarity`.
  """
  similarity = analysis.posemb_similarity(posemb, grid_shape, num_prefix)
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
    distances: per layer, a (heads,) array (`analysis.mean_attention_distance`).
  """
  analysis.require_attentions(distances)
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
    raise analysis.VisualizationError(
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

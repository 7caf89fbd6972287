"""What a ViT's attention and embeddings show, as numbers: attention rollout,
per-head maps, mean attention distance, the principal components of the
patch-embedding filters, position-embedding similarity. numpy in, numpy
out.
"""

import dataclasses
import math
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np
import scipy.linalg

from vit_flax import errors
from vit_flax.weights import npz

GridShape = Tuple[int, int]
# The paper's Figure 7 shows this many principal components of the filters.
NUM_FILTER_PCS = 28


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
    for key in sorted(tree, key=npz.natural_key):
      value = tree[key]
      if key == 'attention_weights':
        found.extend(('/'.join(path), np.asarray(jax.device_get(weights)))
                     for weights in value)
      elif isinstance(value, Mapping):
        walk(value, path + (key,))

  walk(intermediates, ())
  return found


def require_attentions(attentions: Sequence[np.ndarray]):
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
  require_attentions(attentions)
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
  require_attentions(attentions)
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

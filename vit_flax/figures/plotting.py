"""Rendering helpers for figures: matplotlib's Agg backend to arrays and PNGs.

Never pyplot's global state, so figures render headless, in tests, in the
training loop and in the commands alike.
"""

import io
from typing import Tuple

from etils import epath
from matplotlib.backends import backend_agg
import matplotlib.figure
import numpy as np
from PIL import Image

GridShape = Tuple[int, int]


def figure_to_array(figure: matplotlib.figure.Figure) -> np.ndarray:
  """Renders a figure to an RGB uint8 (height, width, 3) array with Agg."""
  canvas = backend_agg.FigureCanvasAgg(figure)
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def new_figure(width: float, height: float,
               dpi: int = 80) -> matplotlib.figure.Figure:
  """A figure of `width` x `height` inches, unattached to pyplot."""
  return matplotlib.figure.Figure(figsize=(width, height), dpi=dpi)


def to_display(image: np.ndarray) -> np.ndarray:
  """A model input in [-1, 1] (or uint8) as floats in [0, 1] for imshow."""
  image = np.asarray(image)
  if image.dtype == np.uint8:
    return image / 255.0
  return np.clip((image + 1.0) / 2.0, 0.0, 1.0)


def normalize(x: np.ndarray, axis=None) -> np.ndarray:
  """Min-max scales to [0, 1] (over `axis`); constant inputs give 0.5."""
  low = x.min(axis=axis, keepdims=True)
  span = x.max(axis=axis, keepdims=True) - low
  return np.where(span > 0, (x - low) / np.where(span > 0, span, 1), 0.5)


def mosaic(tiles: np.ndarray, fill: float = np.nan) -> np.ndarray:
  """(rows, cols, h, w[, c]) tiles as one image, `fill` one pixel between.

  One imshow of a mosaic draws in milliseconds where hundreds of axes (a
  24x24 position-embedding grid) take seconds.
  """
  rows, cols, height, width = tiles.shape[:4]
  out = np.full(((height + 1) * rows - 1, (width + 1) * cols - 1) +
                tiles.shape[4:], fill, np.float64)
  for r in range(rows):
    for c in range(cols):
      out[r * (height + 1):r * (height + 1) + height,
          c * (width + 1):c * (width + 1) + width] = tiles[r, c]
  return out


def upsample(grid: np.ndarray, factor: int, shape: GridShape) -> np.ndarray:
  """Each grid cell as a `factor` x `factor` block, cropped to `shape`."""
  return np.repeat(np.repeat(grid, factor, 0), factor, 1)[:shape[0], :shape[1]]


def hide_ticks(axes):
  """No ticks on either axis (images, maps)."""
  axes.set_xticks([])
  axes.set_yticks([])


def write_png(image: np.ndarray, path) -> None:
  """Writes an RGB uint8 array as a PNG file (any `epath` path)."""
  path = epath.Path(path)
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG')
  path.write_bytes(buffer.getvalue())

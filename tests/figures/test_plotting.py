"""Tests of vit_flax.plotting: figures to arrays and PNGs, tiling, scaling."""

import numpy as np
from PIL import Image

from vit_flax.figures import plotting


def test_figure_to_array_renders_rgb_of_the_figure_size():
  figure = plotting.new_figure(2.0, 1.0, dpi=50)
  figure.add_subplot().imshow(np.eye(4))
  image = plotting.figure_to_array(figure)
  assert image.shape == (50, 100, 3) and image.dtype == np.uint8
  assert image.std() > 0


def test_mosaic_places_tiles_with_a_one_pixel_gap():
  tiles = np.arange(2 * 3 * 2 * 2, dtype=float).reshape(2, 3, 2, 2)
  out = plotting.mosaic(tiles, fill=-1.0)
  assert out.shape == (2 * 3 - 1, 3 * 3 - 1)
  np.testing.assert_array_equal(out[3:5, 6:8], tiles[1, 2])
  assert (out[2] == -1).all() and (out[:, 2] == -1).all()


def test_normalize_and_to_display_scale_to_unit_range():
  x = np.array([[1.0, 3.0], [5.0, 5.0]])
  np.testing.assert_allclose(plotting.normalize(x), [[0, 0.5], [1, 1]])
  np.testing.assert_allclose(plotting.normalize(x, axis=1),
                             [[0, 1], [0.5, 0.5]])
  np.testing.assert_allclose(plotting.to_display(np.array([-1.0, 0.0, 2.0])),
                             [0.0, 0.5, 1.0])
  np.testing.assert_allclose(plotting.to_display(np.array([255], np.uint8)),
                             [1.0])


def test_upsample_repeats_cells_and_crops():
  grid = np.array([[1, 2], [3, 4]])
  np.testing.assert_array_equal(plotting.upsample(grid, 2, (3, 4)),
                                [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4]])


def test_write_png_round_trips(tmp_path):
  image = np.random.RandomState(0).randint(0, 256, (5, 7, 3), np.uint8)
  plotting.write_png(image, tmp_path / 'x.png')
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / 'x.png')),
                                image)

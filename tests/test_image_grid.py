"""Sample grids: rows per class or prototype, row caps, and the uint8 conversion."""

import numpy as np

from pdm_jax import image_grid


def _images(values):
  """One 2x2 single-channel image per value, filled with it."""
  return np.asarray(values, np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 1), np.uint8)


def test_rows_follow_the_labels_in_order():
  images = _images([10, 20, 30, 40, 50])
  grid = image_grid.make_grid(images, np.array([7, 2, 7, 2, 9]), columns=3, padding=1)
  assert grid.shape == (3 * 3 + 1, 3 * 3 + 1, 1)
  # Row r: the images of the r-th smallest label (2, 7, 9), in their order; the rest of a row stays white.
  assert [grid[1 + 3 * r, 1 + 3 * c, 0] for r in range(3) for c in range(3)] == [20, 40, 255, 10, 30, 255,
                                                                                   50, 255, 255]


def test_max_rows_keeps_the_first_rows_with_and_without_labels():
  images = _images(np.arange(30))
  labelled = image_grid.make_grid(images, np.arange(30) % 6, columns=5, max_rows=2)
  assert labelled.shape[0] == 2 * 3 + 1
  assert labelled[1 + 3, 1, 0] == 1  # second row: label 1, first of its images
  plain = image_grid.make_grid(images, columns=10, max_rows=2)
  assert plain.shape == (2 * 3 + 1, 10 * 3 + 1, 1) and plain[4, 1, 0] == 10


def test_to_uint8_maps_the_model_range():
  np.testing.assert_array_equal(image_grid.to_uint8(np.array([-1.5, -1.0, 0.0, 1.0, 2.0])), [0, 0, 128, 255, 255])

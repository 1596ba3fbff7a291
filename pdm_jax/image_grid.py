"""Sample grids: uint8 image batches tiled into one picture, a row per class where there are classes."""


import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray) -> np.ndarray:
  """float images in [-1, 1] (N, H, W, C) -> uint8 in [0, 255], rounded and clipped."""
  return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, labels: np.ndarray | None = None, columns: int = 10,
              padding: int = 1, max_rows: int | None = None) -> np.ndarray:
  """uint8 (N, H, W, C) -> uint8 (rows*(H+p)+p, columns*(W+p)+p, C); with labels (classes or prototype ids), row r
  holds the images of the r-th smallest label present. max_rows: keep only the first rows."""
  images = np.asarray(images)
  n, h, w, c = images.shape
  if labels is not None:
    rows = [images[np.asarray(labels) == label][:columns] for label in np.unique(labels)]
  else:
    columns = min(columns, n) if n else 1
    rows = [images[i:i + columns] for i in range(0, n, columns)]
  rows = rows[:max_rows]
  grid = np.full((len(rows) * (h + padding) + padding, columns * (w + padding) + padding, c), 255, np.uint8)
  for r, row in enumerate(rows):
    for col, image in enumerate(row):
      top, left = padding + r * (h + padding), padding + col * (w + padding)
      grid[top:top + h, left:left + w] = image
  return grid


def save_png(path: str, grid: np.ndarray, min_size: int = 512) -> None:
  """Writes a grid as PNG, enlarged by an integer nearest-neighbour factor so small images stay visible."""
  scale = max(1, min_size // max(grid.shape[:2]))
  image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
  if scale > 1:
    image = image.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
  image.save(path)

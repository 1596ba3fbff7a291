"""A folder of images as process-local numpy batches: one sub-folder per class, or a flat folder without labels, or
a flat folder labelled by an attribute list (data.attributes_file and data.attribute, e.g. CelebA's faces).

The folder is data.data_dir. Files are listed once, put in a fixed pseudo-random order (so every host's slice
mixes all classes) and split over hosts; images are read and decoded only after shuffling and skipping.
"""

import os
import pathlib

import ml_collections
from absl import logging
import numpy as np
import tensorflow as tf
from PIL import Image

from pdm_jax.data import attribute_file
from pdm_jax.data import image_ops
from pdm_jax.data import sharding
from pdm_jax.data import subsets
from pdm_jax.data import types

# Formats that tf.io.decode_image reads.
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.gif')


def _images_in(folder: pathlib.Path, recursive: bool) -> list[pathlib.Path]:
  """Sorted image files in folder (and below it if recursive), hidden files left out."""
  found = folder.rglob('*') if recursive else folder.iterdir()
  return sorted(path for path in found if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith('.') for part in path.relative_to(folder).parts))


def list_images(root: str) -> tuple[list[str], np.ndarray | None, list[str]]:
  """(sorted paths, int64 labels (N,) or None for a flat folder, class names) of the images under root."""
  folder = pathlib.Path(root).expanduser()
  if not folder.is_dir():
    raise FileNotFoundError(f'image folder data.data_dir={root} does not exist: point it at a folder of images.')
  class_folders = [child for child in sorted(folder.iterdir())
                   if child.is_dir() and not child.name.startswith('.') and _images_in(child, recursive=True)]
  loose = _images_in(folder, recursive=False)
  if class_folders and loose:
    raise ValueError(f'{root} holds both images and class sub-folders: move the {len(loose)} loose images '
                     'into a class folder, or use a folder of only images.')
  if not class_folders:
    if not loose:
      raise ValueError(f'no images ({", ".join(IMAGE_SUFFIXES)}) in {root}: put images there, or one '
                       'sub-folder of images per class.')
    return [str(path) for path in loose], None, []
  paths, labels = [], []
  for label, class_folder in enumerate(class_folders):
    members = _images_in(class_folder, recursive=True)
    paths.extend(str(path) for path in members)
    labels.extend([label] * len(members))
  return paths, np.array(labels, np.int64), [class_folder.name for class_folder in class_folders]


def list_examples(data_config: ml_collections.ConfigDict) -> tuple[list[str], np.ndarray | None, list[str]]:
  """list_images of data.data_dir, its flat folder labelled by data.attributes_file if set (class 0: data.attribute
  holds, class 1: not)."""
  root = data_config.get('data_dir', None)
  if not root:
    raise ValueError("data.name='image_folder' needs data.data_dir=/path/to/images.")
  paths, labels, class_names = list_images(root)
  attributes = data_config.get('attributes_file', None)
  if not attributes:
    return paths, labels, class_names
  if labels is not None:
    raise ValueError(f'data.attributes_file labels a flat folder of images, but {root} has class sub-folders: '
                     'point data.data_dir at the images themselves (e.g. img_align_celeba).')
  attribute = data_config.get('attribute', None)
  return paths, attribute_file.labels_for(paths, attributes, attribute), [attribute, f'not {attribute}']


def num_classes(data_config: ml_collections.ConfigDict) -> int | None:
  """Classes of the configured folder without reading its images or attribute list: 2 with an attribute list."""
  if data_config.get('attributes_file', None):
    return 2
  _, labels, class_names = list_images(data_config.get('data_dir', None) or '')
  return len(class_names) if labels is not None else None


def read_sizes(paths: list[str]) -> list[tuple[int, int] | None]:
  """(width, height) of each image from its header, or None where the file is not a readable image."""
  sizes = []
  for path in paths:
    try:
      with Image.open(path) as image:
        sizes.append(image.size)
    except (OSError, SyntaxError, ValueError):  # PIL's ways of saying "not an image I can read"
      sizes.append(None)
  return sizes


def drop_unreadable(paths: list[str], labels: np.ndarray | None, sizes: list[tuple[int, int] | None]
                    ) -> tuple[list[str], np.ndarray | None, list[tuple[int, int]]]:
  """The readable images only (a warning counts and names the others); a ValueError if none is readable.

  Skipped rather than fatal: one broken file among thousands (a truncated download, a stray .jpg that is really
  HTML) should not stop a run, and the warning says which files to fix.
  """
  keep = [i for i, size in enumerate(sizes) if size is not None]
  if len(keep) == len(paths):
    return paths, labels, sizes
  bad = [os.path.basename(paths[i]) for i, size in enumerate(sizes) if size is None]
  if not keep:
    raise ValueError(f'none of the {len(paths)} image files under {os.path.dirname(paths[0])} can be read '
                     f'(e.g. {", ".join(bad[:3])}): check the files.')
  logging.warning('Skipping %d of %d image files that cannot be read (%s%s): fix or remove them to use them.',
                  len(bad), len(paths), ', '.join(bad[:5]), ', ...' if len(bad) > 5 else '')
  return ([paths[i] for i in keep], None if labels is None else labels[keep], [sizes[i] for i in keep])


def check_sizes(paths: list[str], sizes: list[tuple[int, int]], image_size: int) -> None:
  """Raises a ValueError unless every image is image_size x image_size."""
  seen = {}
  for path, size in zip(paths, sizes):
    seen.setdefault(size, path)
    if len(seen) > 1:
      examples = ', '.join(f'{os.path.basename(p)} {w}x{h}' for (w, h), p in seen.items())
      raise ValueError(f'images of mixed sizes ({examples}) and data.resize_mode=\'none\': set '
                       "data.resize_mode='center_crop' or 'squash'.")
  ((width, height),) = seen.keys()
  if (width, height) != (image_size, image_size):
    raise ValueError(f'images are {width}x{height}, not data.image_size={image_size}: set data.image_size to '
                     "match, or data.resize_mode='center_crop' or 'squash'.")


def build(data_config: ml_collections.ConfigDict, *, global_batch_size: int, seed: int, start_step: int = 0,
          process_index: int = 0, process_count: int = 1, train: bool = True
          ) -> tuple[types.DatasetInfo, types.BatchIterator]:
  """An image folder -> (DatasetInfo, iterator of {'image': (B/n, H, W, C) float32, 'label': (B/n,) int32}).

  Same contract as tfds_pipeline.build: endless seeded training batches that resume at start_step, or one
  ordered pass without flips for train=False; labels are the sorted class sub-folders, or the attribute list's.
  With data.examples_per_class, a balanced subset drawn by data.subset_seed.
  """
  image_size = int(data_config.image_size)
  num_channels = int(data_config.get('num_channels', None) or 3)
  use_labels = bool(data_config.get('use_labels', False))
  local_batch_size = types.local_batch_size(global_batch_size, process_count)
  sharding.host_bounds(0, process_index, process_count)  # validates the host numbering before any listing
  resize_mode = image_ops.check_resize_mode(data_config.get('resize_mode', None) or 'none')

  paths, labels, class_names = list_examples(data_config)
  root = data_config.data_dir
  if use_labels and labels is None:
    raise ValueError(f's-PDM needs labels: {root} is a flat folder; put each class in its own sub-folder, give '
                     'data.attributes_file and data.attribute, or set data.use_labels=False (PDM).')
  examples_per_class = data_config.get('examples_per_class', None)
  if examples_per_class:
    if labels is None:
      raise ValueError(f'data.examples_per_class={examples_per_class} needs labels, which the flat folder {root} '
                       'lacks: set data.examples_per_class=0.')
    # Drawn before the headers are read, so a 20,000-face subset of CelebA does not open all 202,599 files.
    chosen = subsets.balanced_subset(labels, len(class_names), examples_per_class,
                                     int(data_config.get('subset_seed', 0)), root)
    paths, labels = [paths[i] for i in chosen], labels[chosen]
  # Every header is read once: unreadable files are skipped before they can fail a batch mid-run.
  paths, labels, sizes = drop_unreadable(paths, labels, read_sizes(paths))
  if resize_mode == 'none':
    check_sizes(paths, sizes, image_size)

  # A fixed order mixing the classes, whatever the run's seed: the same files land on the same host every run.
  order = np.random.default_rng(0).permutation(len(paths))
  start, stop = sharding.host_bounds(len(paths), process_index, process_count)
  mine = order[start:stop]
  examples = {'path': np.array(paths, dtype=object)[mine]}
  if use_labels:
    examples['label'] = labels[mine]
  examples = tf.data.Dataset.from_tensor_slices(examples)

  def preprocess(example, flip_seed):
    batch = {'image': image_ops.preprocess(tf.io.read_file(example['path']), image_size=image_size,
                                           num_channels=num_channels, resize_mode=resize_mode, flip_seed=flip_seed)}
    if use_labels:
      batch['label'] = tf.cast(example['label'], tf.int32)
    return batch

  stream = sharding.batched_stream(
      examples, len(mine), preprocess, local_batch_size=local_batch_size, seed=seed, start_step=start_step,
      train=train, process_index=process_index, random_flip=bool(data_config.get('random_flip', True)),
      # Only file names wait in the buffer, so a whole-epoch buffer (a perfect shuffle) costs little.
      shuffle_buffer=len(mine))
  info = types.DatasetInfo(name=data_config.name, image_size=image_size, num_channels=num_channels,
                           num_classes=len(class_names) if labels is not None else None, num_examples=len(paths))
  return info, stream.as_numpy_iterator()

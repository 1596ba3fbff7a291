"""The embedded offline dataset: scikit-learn's 1,797 real 8x8 handwritten digits, 10 classes."""

import ml_collections
import numpy as np
from PIL import Image
from sklearn import datasets as sk_datasets

from pdm_jax.data import types

NUM_CLASSES = 10
NATIVE_SIZE = 8


def load_digits_arrays(image_size: int = NATIVE_SIZE) -> tuple[np.ndarray, np.ndarray]:
  """All digits as float32 (1797, S, S, 1) in [-1, 1] (resized bilinearly when S != 8) and int32 (1797,) labels."""
  digits = sk_datasets.load_digits()
  images = digits.images.astype(np.float32) / 16.0  # the set's pixel values run 0..16
  if image_size != NATIVE_SIZE:
    images = np.stack([
        np.asarray(Image.fromarray(image, mode='F').resize((image_size, image_size), Image.BILINEAR))
        for image in images])
  images = np.clip(images, 0.0, 1.0) * 2.0 - 1.0
  return images[..., None].astype(np.float32), digits.target.astype(np.int32)


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The order of examples in one epoch: a function of (seed, epoch) only, so a resumed run sees the same data."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def build(data_config: ml_collections.ConfigDict, *, global_batch_size: int, seed: int, start_step: int = 0,
          process_index: int = 0, process_count: int = 1, train: bool = True
          ) -> tuple[types.DatasetInfo, types.BatchIterator]:
  """Digits pipeline: the global batch of step s is rows [s*B, (s+1)*B) of the concatenated epoch orders."""
  if data_config.num_channels != 1:
    raise ValueError(f'data.num_channels={data_config.num_channels}, but digits are grayscale: set it to 1.')
  images, labels = load_digits_arrays(data_config.image_size)
  use_labels = data_config.get('use_labels', True)
  info = types.DatasetInfo(name='digits', image_size=data_config.image_size, num_channels=1,
                           num_classes=NUM_CLASSES if use_labels else None, num_examples=len(images))
  local = types.local_batch_size(global_batch_size, process_count)

  def batch_of(rows: np.ndarray) -> types.Batch:
    mine = rows[process_index * local:(process_index + 1) * local]
    batch = {'image': images[mine]}
    if use_labels:
      batch['label'] = labels[mine]
    return batch

  def train_iterator():
    step = start_step
    while True:
      first, last = step * global_batch_size, (step + 1) * global_batch_size
      rows = np.concatenate([
          epoch_permutation(len(images), seed, epoch)
          for epoch in range(first // len(images), (last - 1) // len(images) + 1)])
      offset = first - (first // len(images)) * len(images)
      yield batch_of(rows[offset:offset + global_batch_size])
      step += 1

  def eval_iterator():
    order = np.arange(len(images))
    for start in range(0, len(images) - global_batch_size + 1, global_batch_size):
      yield batch_of(order[start:start + global_batch_size])

  return info, (train_iterator() if train else eval_iterator())

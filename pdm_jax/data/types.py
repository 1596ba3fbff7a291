"""The contract every input pipeline meets: dataset facts and process-local numpy batches."""

import dataclasses
from typing import Iterator

import numpy as np


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static facts about a training split, known before the first batch."""
  name: str
  image_size: int
  num_channels: int
  num_classes: int | None  # None where the data has no labels
  num_examples: int


# A batch is a dict of numpy arrays for this process only:
#   'image': float32 (local_batch, H, W, C) in [-1, 1];  'label': int32 (local_batch,) where the data has labels.
Batch = dict[str, np.ndarray]
BatchIterator = Iterator[Batch]


def local_batch_size(global_batch_size: int, process_count: int) -> int:
  """Rows of the global batch that one host reads; the global batch must split evenly over hosts."""
  if global_batch_size % process_count:
    raise ValueError(f'train.batch_size={global_batch_size} does not split over {process_count} hosts: '
                     f'use a multiple of {process_count}.')
  return global_batch_size // process_count

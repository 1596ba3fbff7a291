"""Input throughput (images/s) of the tfds pipeline on CIFAR-10-shaped mock data: is a GPU ever left waiting?

Run: python scripts/benchmark_input.py [--batch_size=64] [--num_batches=300]
The mock holds 50,000 PNG-encoded 32x32 images like the prepared CIFAR-10 files, so the figure covers what training
pays for: shuffling, PNG decoding, flips, scaling and batching (not disk reads).
"""

import argparse
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from anywhere without installing

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

from configs import default  # pylint: disable=g-import-not-at-top
from pdm_jax.data import tfds_pipeline  # pylint: disable=g-import-not-at-top

NUM_EXAMPLES = 50_000
NUM_DISTINCT = 1_000  # distinct random images, repeated to fill the split; decoding cost is the same


def _mock_cifar10(self, split, **unused_kwargs):
  """50,000 examples shaped like prepared CIFAR-10: PNG bytes of random 32x32x3 images and labels 0..9."""
  del self, split
  rng = np.random.default_rng(0)
  encoded = [tf.io.encode_png(image).numpy() for image in rng.integers(0, 256, (NUM_DISTINCT, 32, 32, 3), np.uint8)]
  index = np.arange(NUM_EXAMPLES)
  return tf.data.Dataset.from_tensor_slices({'image': np.array(encoded, dtype=object)[index % NUM_DISTINCT],
                                             'label': (index % 10).astype(np.int64)})


def measure(batch_size: int, num_batches: int, warmup: int) -> float:
  """Images per second over num_batches training batches, after warmup batches fill the prefetch buffers."""
  config = default.get_config().data
  config.name, config.image_size, config.num_channels = 'cifar10', 32, 3
  config.random_flip, config.use_labels = True, True
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, as_dataset_fn=_mock_cifar10):
    _, batches = tfds_pipeline.build(config, global_batch_size=batch_size, seed=0)
    for _ in range(warmup):
      next(batches)
    start = time.perf_counter()
    for _ in range(num_batches):
      next(batches)
    return num_batches * batch_size / (time.perf_counter() - start)


def main() -> None:
  """Parses the flags and prints the measured images/s."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch_size', type=int, default=64)
  parser.add_argument('--num_batches', type=int, default=300)
  parser.add_argument('--warmup', type=int, default=20)
  args = parser.parse_args()
  rate = measure(args.batch_size, args.num_batches, args.warmup)
  print(f'{rate:,.0f} images/s at batch {args.batch_size}: {1000 * args.batch_size / rate:.2f} ms per batch on '
        f'{os.cpu_count()} CPU cores (load average {os.getloadavg()[0]:.1f})')


if __name__ == '__main__':
  main()

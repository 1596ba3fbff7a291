"""Inception feature-extraction throughput (images/s) and peak memory on this machine's default JAX device.

Run: python scripts/benchmark_inception.py [--batch_size=8] [--num_batches=5] [--image_size=32]
Random weights (speed does not depend on their values). Every image is resized to 299x299 first, so the input size
barely matters; the figure covers resize + network, not the FID arithmetic. Peak memory is the process's maximum
resident set size (resource.getrusage), which includes JAX, the weights (~95 MB) and compilation.
"""

import argparse
import pathlib
import resource
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from anywhere without installing

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from pdm_jax.evaluation import inception  # pylint: disable=g-import-not-at-top


def _peak_rss_mb() -> float:
  """Peak resident memory of this process so far, in MB (Linux reports KB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(batch_size: int, num_batches: int, image_size: int) -> dict:
  """Times one compiling batch, then num_batches more; returns images/s, compile seconds and peak memory."""
  variables = inception.init_random_variables(seed=0)
  extractor = inception.InceptionFeatureExtractor(variables, batch_size=batch_size)
  images = np.random.default_rng(0).integers(0, 256, (batch_size, image_size, image_size, 3), dtype=np.uint8)
  rss_before = _peak_rss_mb()
  start = time.perf_counter()
  extractor(images)  # compiles the resize and the network
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(num_batches):
    extractor(images)  # returns numpy arrays, so the device work is finished when it returns
  elapsed = time.perf_counter() - start
  return {'images_per_s': num_batches * batch_size / elapsed, 'first_batch_s': compile_s,
          'peak_rss_mb': _peak_rss_mb(), 'rss_before_network_mb': rss_before}


def main() -> None:
  """Parses the flags and prints the measured throughput and memory."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--num_batches', type=int, default=5)
  parser.add_argument('--image_size', type=int, default=32)
  args = parser.parse_args()
  result = measure(args.batch_size, args.num_batches, args.image_size)
  print(f'{result["images_per_s"]:.2f} images/s at batch {args.batch_size} ({args.image_size}px -> 299px) on '
        f'{jax.devices()[0].platform} ({jax.device_count()} device(s)); first batch incl. compile '
        f'{result["first_batch_s"]:.1f} s; peak RSS {result["peak_rss_mb"]:.0f} MB '
        f'({result["rss_before_network_mb"]:.0f} MB before the first batch).')


if __name__ == '__main__':
  main()

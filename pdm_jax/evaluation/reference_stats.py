"""Real-data statistics for FID and KID: computed once per (dataset, split, resolution, weights) and cached as npz.

The mean and covariance are accumulated in float64 batch by batch, so a 50k-image split never sits in memory as
features; KID keeps a uniform random subset of the real features (all of them up to max_kid_features).
"""

import dataclasses
import os
import pathlib
import re
import warnings
from typing import Callable, Iterable

import numpy as np

from pdm_jax.evaluation import inception_weights
from pdm_jax.evaluation import metrics

MAX_KID_FEATURES = 10_000  # 80 MB of float32 2048-d features; torch-fidelity's KID draws subsets of 1000
FeatureFn = Callable[[np.ndarray], np.ndarray]  # images (B, H, W, C) -> features (B, D)


@dataclasses.dataclass(frozen=True)
class ReferenceStats:
  """Statistics of real features: mu (D,), sigma (D, D), kid_features (M, D) with M <= max_kid_features."""
  mu: np.ndarray
  sigma: np.ndarray
  kid_features: np.ndarray
  num_images: int


class _RunningMoments:
  """Streaming mean and covariance of (B, D) batches, shifted by the first batch's mean for numerical stability."""

  def __init__(self):
    self.count, self.shift, self.total, self.outer = 0, None, None, None

  def update(self, features: np.ndarray) -> None:
    features = np.asarray(features, np.float64)
    if self.shift is None:
      self.shift = features.mean(axis=0)
      self.total = np.zeros_like(self.shift)
      self.outer = np.zeros((features.shape[1],) * 2)
    centred = features - self.shift
    self.count += features.shape[0]
    self.total += centred.sum(axis=0)
    self.outer += centred.T @ centred

  def finalize(self) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D), equal to np.cov up to rounding."""
    if self.count < 2:
      raise ValueError(f'reference statistics need at least 2 images, got {self.count}: pass the whole split.')
    mean_offset = self.total / self.count
    sigma = (self.outer - self.count * np.outer(mean_offset, mean_offset)) / (self.count - 1)
    return self.shift + mean_offset, sigma


class _UniformSubset:
  """Keeps a uniform random subset of at most `capacity` rows from a stream: the rows with the smallest random keys."""

  def __init__(self, capacity: int | None, seed: int):
    self.capacity, self.rng = capacity, np.random.default_rng(seed)
    self.rows, self.keys = [], np.zeros(0)

  def update(self, features: np.ndarray) -> None:
    features = np.asarray(features, np.float32)
    self.rows.append(features)
    self.keys = np.concatenate([self.keys, self.rng.random(features.shape[0])])
    if self.capacity is not None and self.keys.size > self.capacity:
      rows = np.concatenate(self.rows)
      keep = np.sort(np.argpartition(self.keys, self.capacity - 1)[:self.capacity])
      self.rows, self.keys = [rows[keep]], self.keys[keep]

  def finalize(self) -> np.ndarray:
    return np.concatenate(self.rows)


def _batches(images, batch_size: int) -> Iterable[np.ndarray]:
  """Splits one (N, H, W, C) array into batches; passes an iterable of batches through."""
  if isinstance(images, np.ndarray):
    if images.ndim != 4:
      raise ValueError(f'images must be (N, H, W, C), got shape {images.shape}: add batch/channel axes.')
    return (images[start:start + batch_size] for start in range(0, images.shape[0], batch_size))
  return images


def compute_reference_stats(images, feature_fn: FeatureFn, max_kid_features: int | None = MAX_KID_FEATURES,
                            batch_size: int = 500, seed: int = 0) -> ReferenceStats:
  """Statistics of feature_fn over images: one (N, H, W, C) uint8 array or an iterable of such batches.

  For Inception: feature_fn = lambda batch: extractor(batch)['pool']. max_kid_features=None keeps every feature
  (needed to reproduce torch-fidelity's KID subsets exactly).
  """
  moments, subset = _RunningMoments(), _UniformSubset(max_kid_features, seed)
  for batch in _batches(images, batch_size):
    features = np.asarray(feature_fn(batch))
    if features.ndim != 2 or features.shape[0] != len(batch):
      raise ValueError(f'feature_fn must map a batch of {len(batch)} images to ({len(batch)}, D) features, got '
                       f'{features.shape}: for Inception use lambda b: extractor(b)["pool"].')
    moments.update(features)
    subset.update(features)
  mu, sigma = moments.finalize()
  return ReferenceStats(mu=mu, sigma=sigma, kid_features=subset.finalize(), num_images=moments.count)


def reference_stats_path(dataset: str, split: str, resolution: int, weights_hash: str,
                         directory: str | os.PathLike | None = None) -> pathlib.Path:
  """Cache file <directory or cache_dir()/reference_stats>/<dataset>_<split>_<resolution>px_<weights_hash>.npz."""
  parts = [str(dataset), str(split), f'{int(resolution)}px', str(weights_hash)]
  if not all(parts) or any(re.search(r'[^A-Za-z0-9._-]', part) for part in parts):
    raise ValueError(f'cache key parts must be non-empty and use only letters, digits, ".", "_", "-": got {parts}.')
  directory = pathlib.Path(directory) if directory is not None else inception_weights.cache_dir() / 'reference_stats'
  return directory / ('_'.join(parts) + '.npz')


def save_reference_stats(stats: ReferenceStats, path: str | os.PathLike) -> None:
  """Writes stats to an npz file, atomically (a crash never leaves a half-written cache entry)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  partial = path.with_suffix('.partial.npz')
  np.savez(partial, mu=stats.mu, sigma=stats.sigma, kid_features=stats.kid_features,
           num_images=np.int64(stats.num_images))
  os.replace(partial, path)


def load_reference_stats(path: str | os.PathLike) -> ReferenceStats:
  """Reads stats written by save_reference_stats."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'no reference statistics at {path}: compute them with load_or_compute_reference_stats.')
  with np.load(path) as data:
    missing = {'mu', 'sigma', 'kid_features', 'num_images'} - set(data.files)
    if missing:
      raise ValueError(f'{path} lacks {sorted(missing)}: delete it so the statistics are recomputed.')
    return ReferenceStats(mu=data['mu'], sigma=data['sigma'], kid_features=data['kid_features'],
                          num_images=int(data['num_images']))


def load_or_compute_reference_stats(dataset: str, split: str, resolution: int, weights_hash: str,
                                    images_fn: Callable[[], object], feature_fn: FeatureFn,
                                    directory: str | os.PathLike | None = None, **compute_kwargs) -> ReferenceStats:
  """Cached statistics for the key if present, else computed from images_fn() (called only on a miss) and saved."""
  path = reference_stats_path(dataset, split, resolution, weights_hash, directory)
  if path.is_file():
    return load_reference_stats(path)
  stats = compute_reference_stats(images_fn(), feature_fn, **compute_kwargs)
  save_reference_stats(stats, path)
  return stats


def score_against_reference(pool_features, logits_unbiased, reference: ReferenceStats,
                            kid_subset_size: int = metrics.KID_SUBSET_SIZE) -> dict:
  """FID, KID and IS of samples' Inception outputs (N, 2048), (N, 1008) against reference statistics.

  KID's subset size shrinks to the number of samples (with a warning) so small periodic evaluations still score;
  the size used is returned as 'kid_subset_size': compare KIDs only at equal sizes.
  """
  pool_features = np.asarray(pool_features)
  num_samples = pool_features.shape[0]
  mu, sigma = metrics.feature_statistics(pool_features)
  subset_size = min(kid_subset_size, num_samples, reference.kid_features.shape[0])
  if subset_size < kid_subset_size:
    warnings.warn(f'KID subset size reduced from {kid_subset_size} to {subset_size} (only that many samples); '
                  'KID is then not comparable with published values.', RuntimeWarning, stacklevel=2)
  kid_mean, kid_std = metrics.kernel_inception_distance(pool_features, reference.kid_features,
                                                        subset_size=subset_size)
  is_mean, is_std = metrics.inception_score(logits_unbiased)
  return {'fid': metrics.frechet_distance(mu, sigma, reference.mu, reference.sigma),
          'kid_mean': kid_mean, 'kid_std': kid_std, 'kid_subset_size': subset_size,
          'is_mean': is_mean, 'is_std': is_std, 'num_samples': num_samples}

"""Sample-quality metrics on feature arrays: FID, KID, Inception Score, precision / recall.

Everything here is numpy float64 on the host: the inputs are small (N x 2048 features, N x 1008 logits) next to the
network that made them, and double precision keeps the matrix square root of FID honest. Defaults follow the tools
papers report with: pytorch-fid for FID, torch-fidelity for KID (100 subsets of 1000, seed 2020) and IS (10 splits,
shuffled with seed 2020), and Kynkaanniemi et al. (2019) with k=3 for precision / recall.
"""

import warnings

import numpy as np

# torch-fidelity's defaults, so our numbers line up with the papers that quote it.
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
KID_DEGREE = 3
KID_COEF0 = 1.0
IS_SPLITS = 10
RNG_SEED = 2020


def _as_features(features, name: str) -> np.ndarray:
  """Checks a (N, D) feature array and returns it as float64."""
  array = np.asarray(features, dtype=np.float64)
  if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
    raise ValueError(f'{name} must be a non-empty (num_samples, dim) array, got shape {array.shape}: '
                     'flatten per-sample features first.')
  if not np.all(np.isfinite(array)):
    raise ValueError(f'{name} contains NaN or inf: check the images / network that produced it.')
  return array


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64, as pytorch-fid computes them."""
  array = _as_features(features, 'features')
  if array.shape[0] < 2:
    raise ValueError('a covariance needs at least 2 samples, got 1: pass more images.')
  return array.mean(axis=0), np.cov(array, rowvar=False)


def _zero_rounding_noise(eigenvalues: np.ndarray) -> np.ndarray:
  """Eigenvalues (D,) of a PSD matrix with those below rounding level (D * eps * max) set to 0.

  A square root would amplify that noise (sqrt(1e-16) = 1e-8 per null direction) into visible FID error.
  """
  tolerance = eigenvalues.max(initial=0.0) * eigenvalues.size * np.finfo(np.float64).eps
  return np.where(eigenvalues > tolerance, eigenvalues, 0.0)


def _warn_if_singular(eigenvalues: np.ndarray, name: str) -> None:
  """Warns when a covariance has zero eigenvalues (after _zero_rounding_noise), e.g. fewer samples than dims."""
  rank = int(np.count_nonzero(eigenvalues))
  if rank < eigenvalues.size:
    warnings.warn(f'{name} is singular (rank {rank} < dim {eigenvalues.size}); FID is still exact for these '
                  'statistics but biased: use more samples than feature dimensions.', RuntimeWarning,
                  stacklevel=3)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """Frechet distance between Gaussians N(mu1 (D,), sigma1 (D, D)) and N(mu2, sigma2); FID on Inception features.

  d = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2). With S1 = L L^T from S1's eigendecomposition (L of
  rank r), the last trace is the sum of square roots of the eigenvalues of the symmetric PSD (r, r) matrix L^T S2 L
  (same nonzero spectrum as S1 S2): real and exact when a covariance is singular, and about twice as fast as
  pytorch-fid's scipy.linalg.sqrtm, with which it agrees to ~1e-12 relative where that is well posed.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  dim = mu1.shape[0] if mu1.ndim == 1 else -1
  for name, value, shape in (('mu1', mu1, (dim,)), ('mu2', mu2, (dim,)), ('sigma1', sigma1, (dim, dim)),
                             ('sigma2', sigma2, (dim, dim))):
    if dim < 1 or value.shape != shape:
      raise ValueError(f'{name} has shape {value.shape}, expected {shape if dim > 0 else "(D,)"}: '
                       'pass statistics of features of the same dimension (see feature_statistics).')
    if not np.all(np.isfinite(value)):
      raise ValueError(f'{name} contains NaN or inf: recompute the statistics from finite features.')
  # Symmetrise: np.cov is symmetric only up to rounding, and eigh reads one triangle.
  sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2
  eigenvalues1, eigenvectors1 = np.linalg.eigh(sigma1)
  eigenvalues1 = _zero_rounding_noise(eigenvalues1)
  _warn_if_singular(eigenvalues1, 'sigma1')
  _warn_if_singular(_zero_rounding_noise(np.linalg.eigvalsh(sigma2)), 'sigma2')
  nonzero = eigenvalues1 > 0
  factor1 = eigenvectors1[:, nonzero] * np.sqrt(eigenvalues1[nonzero])  # (D, r): sigma1 = factor1 factor1^T
  middle = factor1.T @ sigma2 @ factor1
  middle_eigenvalues = _zero_rounding_noise(np.linalg.eigvalsh((middle + middle.T) / 2))
  trace_sqrt = np.sum(np.sqrt(middle_eigenvalues))
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def fid_from_features(features1, features2) -> float:
  """FID between two feature sets (N1, D) and (N2, D), e.g. Inception pool features of real and generated images."""
  return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


def _polynomial_mmd2(features1: np.ndarray, features2: np.ndarray, degree: int, gamma: float,
                     coef0: float) -> float:
  """Unbiased MMD^2 (U-statistic on K_XX, K_YY; V-statistic on K_XY, as torch-fidelity) of two (m, D) sets."""
  num = features1.shape[0]
  k_xx = (features1 @ features1.T * gamma + coef0) ** degree
  k_yy = (features2 @ features2.T * gamma + coef0) ** degree
  k_xy = (features1 @ features2.T * gamma + coef0) ** degree
  within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (num * (num - 1))
  return float(within - 2.0 * k_xy.sum() / (num * num))


def kernel_inception_distance(features1, features2, num_subsets: int = KID_SUBSETS,
                              subset_size: int = KID_SUBSET_SIZE, degree: int = KID_DEGREE,
                              gamma: float | None = None, coef0: float = KID_COEF0,
                              seed: int = RNG_SEED) -> tuple[float, float]:
  """KID mean and std over subsets of features (N1, D), (N2, D); polynomial kernel (x.y / D + 1)^3 by default.

  Subsets are drawn without replacement, first from features1 then features2 for each subset, from
  np.random.RandomState(seed), as torch-fidelity does. Fewer samples than subset_size raise a ValueError (as
  torch-fidelity): pass a smaller subset_size explicitly, and report it, when evaluating few samples.
  """
  features1 = _as_features(features1, 'features1')
  features2 = _as_features(features2, 'features2')
  if features1.shape[1] != features2.shape[1]:
    raise ValueError(f'feature dims differ ({features1.shape[1]} vs {features2.shape[1]}): '
                     'use features from the same layer.')
  if num_subsets < 1 or subset_size < 2:
    raise ValueError(f'need num_subsets >= 1 and subset_size >= 2, got {num_subsets}, {subset_size}.')
  smallest = min(features1.shape[0], features2.shape[0])
  if smallest < subset_size:
    raise ValueError(f'KID needs at least subset_size={subset_size} samples per set, got {smallest}: '
                     f'pass subset_size<={smallest} (and report it) or use more samples.')
  gamma = 1.0 / features1.shape[1] if gamma is None else gamma
  rng = np.random.RandomState(seed)
  mmds = np.zeros(num_subsets)
  for i in range(num_subsets):
    subset1 = features1[rng.choice(features1.shape[0], subset_size, replace=False)]
    subset2 = features2[rng.choice(features2.shape[0], subset_size, replace=False)]
    mmds[i] = _polynomial_mmd2(subset1, subset2, degree, gamma, coef0)
  return float(mmds.mean()), float(mmds.std())


def inception_score(logits, num_splits: int = IS_SPLITS, shuffle: bool = True,
                    seed: int = RNG_SEED) -> tuple[float, float]:
  """Inception Score mean and std over num_splits splits of logits (N, C): exp(E_x KL(p(y|x) || p(y))).

  torch-fidelity softmaxes all 1008 'logits_unbiased' (fc without bias; see inception.py) after shuffling the rows
  with np.random.RandomState(seed); pass those logits to reproduce its numbers.
  """
  logits = _as_features(logits, 'logits')
  num = logits.shape[0]
  if num < num_splits:
    raise ValueError(f'IS with {num_splits} splits needs at least {num_splits} samples, got {num}: '
                     'pass fewer num_splits or more samples.')
  if shuffle:
    logits = logits[np.random.RandomState(seed).permutation(num)]
  # log-softmax via a shifted logsumexp, so large logits cannot overflow.
  shifted = logits - logits.max(axis=1, keepdims=True)
  log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
  p = np.exp(log_p)
  scores = []
  for i in range(num_splits):
    chunk = slice(i * num // num_splits, (i + 1) * num // num_splits)
    log_marginal = np.log(p[chunk].mean(axis=0, keepdims=True))
    kl = np.sum(p[chunk] * (log_p[chunk] - log_marginal), axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))


def _kth_neighbour_radii(features: np.ndarray, k: int, batch_size: int) -> np.ndarray:
  """Distance (N,) from each row of features (N, D) to its k-th nearest other row."""
  radii = np.empty(features.shape[0])
  for start in range(0, features.shape[0], batch_size):
    distances = _pairwise_distances(features[start:start + batch_size], features)
    # Index k, not k-1: the nearest "neighbour" at distance 0 is the point itself.
    radii[start:start + batch_size] = np.partition(distances, k, axis=1)[:, k]
  return radii


def _pairwise_distances(rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
  """Euclidean distances (R, C) between rows (R, D) and columns (C, D)."""
  squared = (np.sum(rows**2, axis=1)[:, None] + np.sum(columns**2, axis=1)[None, :] - 2.0 * rows @ columns.T)
  return np.sqrt(np.clip(squared, 0.0, None))


def _fraction_inside(queries: np.ndarray, centres: np.ndarray, radii: np.ndarray, batch_size: int) -> float:
  """Fraction of queries (Q, D) inside at least one ball (centres (C, D), radii (C,))."""
  inside = 0
  for start in range(0, queries.shape[0], batch_size):
    distances = _pairwise_distances(queries[start:start + batch_size], centres)
    inside += int(np.sum(np.any(distances <= radii[None, :], axis=1)))
  return inside / queries.shape[0]


def precision_recall(real_features, fake_features, k: int = 3, batch_size: int = 1024) -> tuple[float, float]:
  """Improved precision and recall (Kynkaanniemi et al. 2019) of fake (N2, D) against real (N1, D) features.

  Precision: fraction of fakes inside the union of k-NN balls around real points; recall: the converse.
  """
  real = _as_features(real_features, 'real_features')
  fake = _as_features(fake_features, 'fake_features')
  if real.shape[1] != fake.shape[1]:
    raise ValueError(f'feature dims differ ({real.shape[1]} vs {fake.shape[1]}): use features from the same layer.')
  if min(real.shape[0], fake.shape[0]) <= k:
    raise ValueError(f'precision/recall with k={k} needs more than {k} samples per set: pass more samples.')
  real_radii = _kth_neighbour_radii(real, k, batch_size)
  fake_radii = _kth_neighbour_radii(fake, k, batch_size)
  precision = _fraction_inside(fake, real, real_radii, batch_size)
  recall = _fraction_inside(real, fake, fake_radii, batch_size)
  return precision, recall

"""Metric parity with independent numpy / scipy references written from the published formulas, and bad input."""

import warnings

import numpy as np
import pytest
import scipy.linalg
import scipy.special
import scipy.stats
from scipy.spatial.distance import cdist

from pdm_jax.evaluation import metrics
from pdm_jax.evaluation import reference_stats


def _gaussian_features(seed, num, dim, shift=0.0, scale=1.0):
  rng = np.random.default_rng(seed)
  mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
  return rng.normal(size=(num, dim)) @ mixing * scale + shift


def reference_fid(features1, features2):
  """Heusel et al. (2017) with scipy's general matrix square root, as pytorch-fid computes it."""
  mu1, mu2 = features1.mean(0), features2.mean(0)
  sigma1, sigma2 = np.cov(features1, rowvar=False), np.cov(features2, rowvar=False)
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
  return np.sum((mu1 - mu2)**2) + np.trace(sigma1 + sigma2 - 2 * covmean)


def reference_kid(features1, features2, num_subsets, subset_size, seed=2020):
  """Binkowski et al. (2018): mean/std over subsets of the unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3."""
  rng = np.random.RandomState(seed)
  dim = features1.shape[1]
  kernel = lambda a, b: (a @ b.T / dim + 1.0)**3
  values = []
  for _ in range(num_subsets):
    x = features1[rng.choice(len(features1), subset_size, replace=False)]
    y = features2[rng.choice(len(features2), subset_size, replace=False)]
    off_diagonal = ~np.eye(subset_size, dtype=bool)
    values.append(kernel(x, x)[off_diagonal].mean() + kernel(y, y)[off_diagonal].mean() - 2 * kernel(x, y).mean())
  return np.mean(values), np.std(values)


def reference_inception_score(logits, num_splits, seed=2020):
  """Salimans et al. (2016): exp(E_x KL(p(y|x) || p(y))) per split, after torch-fidelity's seeded shuffle."""
  logits = logits[np.random.RandomState(seed).permutation(len(logits))]
  probabilities = scipy.special.softmax(logits, axis=1)
  scores = []
  num = len(logits)
  for i in range(num_splits):
    chunk = probabilities[i * num // num_splits:(i + 1) * num // num_splits]  # torch-fidelity's split boundaries
    marginal = chunk.mean(axis=0)
    scores.append(np.exp(np.mean([scipy.stats.entropy(p, marginal) for p in chunk])))
  return np.mean(scores), np.std(scores)


def reference_precision_recall(real, fake, k):
  """Kynkaanniemi et al. (2019), brute force with scipy distances."""
  real_radii = np.sort(cdist(real, real), axis=1)[:, k]
  fake_radii = np.sort(cdist(fake, fake), axis=1)[:, k]
  precision = np.mean(np.any(cdist(fake, real) <= real_radii[None], axis=1))
  recall = np.mean(np.any(cdist(real, fake) <= fake_radii[None], axis=1))
  return precision, recall


def test_fid_matches_scipy_sqrtm_reference():
  features1 = _gaussian_features(0, 500, 32)
  features2 = _gaussian_features(1, 400, 32, shift=0.3, scale=1.5)
  ours = metrics.fid_from_features(features1, features2)
  expected = reference_fid(features1, features2)
  assert abs(ours - expected) <= 1e-6 * abs(expected), (ours, expected)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pytorch-fid passes scipy a deprecated argument
def test_fid_matches_pytorch_fid():
  fid_score = pytest.importorskip('pytorch_fid.fid_score')
  features1 = _gaussian_features(2, 300, 16)
  features2 = _gaussian_features(3, 300, 16, shift=-0.2)
  mu1, sigma1 = metrics.feature_statistics(features1)
  mu2, sigma2 = metrics.feature_statistics(features2)
  expected = fid_score.calculate_frechet_distance(mu1, sigma1, mu2, sigma2)
  ours = metrics.frechet_distance(mu1, sigma1, mu2, sigma2)
  assert abs(ours - expected) <= 1e-6 * abs(expected), (ours, expected)


def test_fid_of_a_set_with_itself_is_zero():
  features = _gaussian_features(4, 300, 24)
  assert abs(metrics.fid_from_features(features, features)) < 1e-9


def test_fid_grows_with_noise_on_digit_pixels():
  digits = pytest.importorskip('sklearn.datasets').load_digits().data
  rng = np.random.default_rng(0)
  # Pixels as features: the always-blank corner pixels make the covariance singular, so silence that warning.
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', RuntimeWarning)
    fids = [metrics.fid_from_features(digits, digits + rng.normal(0, std, digits.shape)) for std in (0, 1, 2, 4)]
  assert abs(fids[0]) < 1e-6  # trace(sigma) ~ 1e3: rounding only
  assert np.all(np.diff(fids) > 0), fids


def test_singular_covariance_warns_and_still_computes():
  features1 = _gaussian_features(5, 10, 32)  # 10 samples in 32 dims: rank 9
  features2 = _gaussian_features(6, 200, 32, shift=0.5)
  with pytest.warns(RuntimeWarning, match='singular'):
    fid = metrics.fid_from_features(features1, features2)
  assert np.isfinite(fid) and fid > 0
  with pytest.warns(RuntimeWarning, match='singular'):
    assert abs(metrics.fid_from_features(features1, features1)) < 1e-9
  # Exact reference: with S = L L^T (L the scaled centred data), tr (S1 S2)^1/2 is the nuclear norm of L1^T L2.
  factor1 = (features1 - features1.mean(0)).T / np.sqrt(len(features1) - 1)
  factor2 = (features2 - features2.mean(0)).T / np.sqrt(len(features2) - 1)
  trace_sqrt = scipy.linalg.svdvals(factor1.T @ factor2).sum()
  expected = (np.sum((features1.mean(0) - features2.mean(0))**2) + np.sum(factor1**2) + np.sum(factor2**2)
              - 2 * trace_sqrt)
  assert abs(fid - expected) <= 1e-6 * expected, (fid, expected)


def test_well_conditioned_fid_does_not_warn():
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    metrics.fid_from_features(_gaussian_features(7, 200, 8), _gaussian_features(8, 200, 8))


def test_kid_matches_reference():
  features1 = _gaussian_features(9, 120, 16)
  features2 = _gaussian_features(10, 90, 16, shift=0.4)
  ours = metrics.kernel_inception_distance(features1, features2, num_subsets=7, subset_size=50)
  expected = reference_kid(features1, features2, num_subsets=7, subset_size=50)
  np.testing.assert_allclose(ours, expected, rtol=1e-6)


def test_kid_matches_sklearn_kernel_with_explicit_gamma():
  pairwise = pytest.importorskip('sklearn.metrics.pairwise')
  features1 = _gaussian_features(11, 40, 8)
  features2 = _gaussian_features(12, 40, 8, shift=1.0)
  k_xx = pairwise.polynomial_kernel(features1, degree=3, gamma=0.5, coef0=2.0)
  k_yy = pairwise.polynomial_kernel(features2, degree=3, gamma=0.5, coef0=2.0)
  k_xy = pairwise.polynomial_kernel(features1, features2, degree=3, gamma=0.5, coef0=2.0)
  m = 40
  expected = ((k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1)) - 2 * k_xy.mean())
  mean, std = metrics.kernel_inception_distance(features1, features2, num_subsets=1, subset_size=40, gamma=0.5,
                                                coef0=2.0)
  assert abs(mean - expected) <= 1e-6 * abs(expected) and std == 0.0


def test_kid_is_near_zero_for_the_same_distribution():
  mean, _ = metrics.kernel_inception_distance(_gaussian_features(13, 400, 16), _gaussian_features(13, 400, 16),
                                              num_subsets=10, subset_size=100)
  far, _ = metrics.kernel_inception_distance(_gaussian_features(13, 400, 16), _gaussian_features(14, 400, 16, 1.0),
                                             num_subsets=10, subset_size=100)
  assert abs(mean) < 0.05 * far


def test_kid_with_too_few_samples_raises():
  with pytest.raises(ValueError, match='subset_size=1000.*got 200'):
    metrics.kernel_inception_distance(_gaussian_features(0, 200, 4), _gaussian_features(1, 5000, 4))


def test_inception_score_matches_reference():
  logits = np.random.default_rng(15).normal(size=(103, 1008)) * 3  # 103: splits of unequal size
  np.testing.assert_allclose(metrics.inception_score(logits), reference_inception_score(logits, 10), rtol=1e-6)


def test_inception_score_bounds():
  confident = np.full((100, 10), -50.0)
  confident[np.arange(100), np.arange(100) % 10] = 50.0  # sharp predictions, uniform over 10 classes
  mean, _ = metrics.inception_score(confident, num_splits=1)
  assert abs(mean - 10.0) < 1e-6
  mean, _ = metrics.inception_score(np.zeros((100, 10)), num_splits=1)
  assert abs(mean - 1.0) < 1e-9


def test_precision_recall_matches_brute_force():
  real = _gaussian_features(16, 150, 6)
  fake = _gaussian_features(17, 120, 6, shift=0.7, scale=0.6)
  ours = metrics.precision_recall(real, fake, k=3, batch_size=37)
  expected = reference_precision_recall(real, fake, k=3)
  np.testing.assert_allclose(ours, expected, rtol=1e-6)
  assert ours[0] > ours[1]  # a narrow fake distribution: precise but low recall


def test_reference_stats_stream_equals_batch_statistics(tmp_path):
  features = _gaussian_features(18, 230, 12, shift=5.0)
  images = np.arange(230).reshape(230, 1, 1, 1).astype(np.uint8)
  stats = reference_stats.compute_reference_stats(images, lambda batch: features[batch[:, 0, 0, 0]],
                                                  max_kid_features=100, batch_size=64)
  mu, sigma = metrics.feature_statistics(features)
  np.testing.assert_allclose(stats.mu, mu, rtol=1e-12)
  np.testing.assert_allclose(stats.sigma, sigma, rtol=1e-10, atol=1e-12)
  assert stats.kid_features.shape == (100, 12) and stats.num_images == 230
  # The KID subset holds distinct real rows.
  assert len({tuple(row) for row in stats.kid_features.round(4)}) == 100
  path = reference_stats.reference_stats_path('digits', 'train', 8, 'abc123', tmp_path)
  calls = []
  make = lambda: calls.append(1) or images
  for _ in range(2):
    cached = reference_stats.load_or_compute_reference_stats(
        'digits', 'train', 8, 'abc123', make, lambda batch: features[batch[:, 0, 0, 0]], tmp_path,
        max_kid_features=100, batch_size=64)
  assert path.is_file() and len(calls) == 1
  np.testing.assert_array_equal(cached.kid_features, stats.kid_features)
  np.testing.assert_allclose(cached.sigma, stats.sigma)


def test_reference_stats_key_rejects_path_characters(tmp_path):
  with pytest.raises(ValueError, match='letters, digits'):
    reference_stats.reference_stats_path('../etc', 'train', 32, 'abc', tmp_path)


def test_score_against_reference_shrinks_kid_subset_with_warning():
  real = _gaussian_features(19, 300, 16)
  reference = reference_stats.ReferenceStats(*metrics.feature_statistics(real), kid_features=real, num_images=300)
  logits = np.random.default_rng(20).normal(size=(40, 1008))
  with pytest.warns(RuntimeWarning, match='KID subset size reduced'):
    scores = reference_stats.score_against_reference(_gaussian_features(21, 40, 16), logits, reference)
  assert scores['kid_subset_size'] == 40 and scores['num_samples'] == 40
  assert all(np.isfinite(scores[key]) for key in ('fid', 'kid_mean', 'kid_std', 'is_mean', 'is_std'))


@pytest.mark.parametrize('call, match', [
    (lambda: metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4)), 'expected'),
    (lambda: metrics.frechet_distance(np.zeros(2), np.eye(2) * np.nan, np.zeros(2), np.eye(2)), 'NaN'),
    (lambda: metrics.feature_statistics(np.zeros((1, 4))), 'at least 2'),
    (lambda: metrics.fid_from_features(np.zeros(5), np.zeros(5)), 'num_samples, dim'),
    (lambda: metrics.inception_score(np.zeros((5, 10))), 'at least 10'),
    (lambda: metrics.precision_recall(np.zeros((3, 2)), np.zeros((9, 2))), 'more than 3'),
])
def test_bad_input_raises(call, match):
  with pytest.raises(ValueError, match=match):
    call()

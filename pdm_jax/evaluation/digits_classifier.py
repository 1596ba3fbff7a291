"""A small classifier of scikit-learn's 8x8 digits, and the quality report it gives generated digits.

Inception features mean little on 8x8 images, so the embedded digits set is scored in the feature space of this
classifier instead: accuracy against intended labels, the class histogram (mode collapse shows as missing classes)
and a Frechet distance to the real digits' features. It trains in seconds, so it ships as code, not weights.
"""

import functools
import warnings

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from pdm_jax.evaluation import metrics

DIGITS_SIZE = 8
DIGITS_MAX = 16.0  # load_digits pixels are integers 0..16
NUM_CLASSES = 10


def _area_resize_matrix(size: int) -> np.ndarray:
  """(8, size) matrix averaging source pixels by their overlap with each target pixel (area interpolation)."""
  edges = np.arange(size + 1) * (DIGITS_SIZE / size)  # source pixel edges in target-pixel units
  weights = np.zeros((DIGITS_SIZE, size))
  for target in range(DIGITS_SIZE):
    overlap = np.minimum(edges[1:], target + 1) - np.maximum(edges[:-1], target)
    weights[target] = np.clip(overlap, 0.0, None)
  return weights / weights.sum(axis=1, keepdims=True)


def to_digits_scale(images) -> np.ndarray:
  """uint8 images (N, H, H, 1) or (N, H, H) in 0..255 -> (N, 64) floats in load_digits' 0..16 scale at 8x8.

  Inverts the training pipeline's x / 16 * 2 - 1 followed by the sampler's (x + 1) / 2 * 255 (uint8 = x * 255 / 16).
  """
  array = np.asarray(images)
  if array.ndim == 4 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim != 3 or array.shape[1] != array.shape[2] or array.shape[0] == 0:
    raise ValueError(f'digit images must be (N, H, H) or (N, H, H, 1), got shape {np.shape(images)}: '
                     'pass a non-empty batch of square single-channel images.')
  if array.dtype != np.uint8:
    raise ValueError(f'digit images must be uint8 in 0..255, got {array.dtype}: convert samples with '
                     '((x + 1) / 2 * 255).round().astype(np.uint8).')
  pixels = array.astype(np.float64) * (DIGITS_MAX / 255.0)
  if array.shape[1] != DIGITS_SIZE:
    resize = _area_resize_matrix(array.shape[1])
    pixels = np.einsum('ih,nhw,jw->nij', resize, pixels, resize)
  return pixels.reshape(pixels.shape[0], DIGITS_SIZE * DIGITS_SIZE)


def _shift_augment(pixels: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Adds one-pixel shifts (up/down/left/right, zero fill) of (N, 64) images: samples are rarely centred exactly."""
  images = pixels.reshape(-1, DIGITS_SIZE, DIGITS_SIZE)
  padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))
  shifted = [images]
  for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
    shifted.append(padded[:, 1 - dy:1 - dy + DIGITS_SIZE, 1 - dx:1 - dx + DIGITS_SIZE])
  return np.concatenate(shifted).reshape(-1, DIGITS_SIZE * DIGITS_SIZE), np.tile(labels, len(shifted))


def fit_mlp(pixels: np.ndarray, labels: np.ndarray, seed: int = 0) -> MLPClassifier:
  """Fits the digits MLP (64 tanh units) on pixels (N, 64) in 0..16 with shift augmentation; about 3-6 s on a CPU."""
  inputs, targets = _shift_augment(pixels / DIGITS_MAX, labels)
  # tanh, not relu: dead relu units would make the feature covariance singular and the Frechet distance noisy.
  mlp = MLPClassifier(hidden_layer_sizes=(64,), activation='tanh', alpha=1e-2, max_iter=200, random_state=seed)
  with warnings.catch_warnings():
    # A fixed iteration budget keeps training to seconds; accuracy is already ~0.98 there.
    warnings.simplefilter('ignore', ConvergenceWarning)
    mlp.fit(inputs, targets)
  return mlp


class DigitsClassifier:
  """A fitted digits MLP: predicts labels of uint8 digit images and embeds them in its 64-d hidden layer."""

  def __init__(self, mlp: MLPClassifier):
    self.mlp = mlp
    real_pixels = load_digits().images.reshape(-1, DIGITS_SIZE * DIGITS_SIZE)
    # Reference statistics of all 1,797 real digits, for the Frechet distance.
    self.real_mu, self.real_sigma = metrics.feature_statistics(self._hidden(real_pixels))

  def _hidden(self, pixels: np.ndarray) -> np.ndarray:
    """Hidden-layer activations (N, 64) of pixels (N, 64) in 0..16."""
    return np.tanh(pixels / DIGITS_MAX @ self.mlp.coefs_[0] + self.mlp.intercepts_[0])

  def predict(self, images) -> np.ndarray:
    """Predicted labels int (N,) of uint8 images (N, H, H[, 1]) in 0..255."""
    return self.mlp.predict(to_digits_scale(images) / DIGITS_MAX).astype(np.int64)

  def features(self, images) -> np.ndarray:
    """Penultimate (hidden-layer) features (N, 64) of uint8 images (N, H, H[, 1]), for a Frechet distance."""
    return self._hidden(to_digits_scale(images))


def train_digits_classifier(seed: int = 0) -> DigitsClassifier:
  """Trains the digits classifier on all of load_digits at native 8x8 in a few seconds; deterministic per seed."""
  digits = load_digits()
  pixels = digits.images.reshape(-1, DIGITS_SIZE * DIGITS_SIZE)
  return DigitsClassifier(fit_mlp(pixels, digits.target, seed))


@functools.lru_cache(maxsize=1)
def _default_classifier() -> DigitsClassifier:
  """The seed-0 classifier, trained once per process."""
  return train_digits_classifier(seed=0)


def predict_digits(images) -> np.ndarray:
  """Digit classes int (N,) of uint8 images (N, H, H[, 1]) in 0..255, by the cached seed-0 classifier."""
  return _default_classifier().predict(images)


def real_digits_uint8() -> tuple[np.ndarray, np.ndarray]:
  """All real digits as uint8 images (1797, 8, 8, 1) on the sampler's 0..255 scale, and their labels (1797,)."""
  digits = load_digits()
  images = np.round(digits.images * (255.0 / DIGITS_MAX)).astype(np.uint8)
  return images[..., None], digits.target.astype(np.int64)


def digits_report(images, labels=None, classifier: DigitsClassifier | None = None) -> dict:
  """Scores uint8 digit images (N, H, H[, 1]): accuracy (if labels (N,) given), class counts, Frechet distance.

  Keys: 'accuracy', 'class_counts' (10 ints), 'num_classes_present', 'frechet_distance' (to all real digits; it
  shrinks with N, so compare only runs with the same number of samples). Uses a cached seed-0 classifier by default.
  """
  if len(images) < 2:
    raise ValueError('the Frechet distance needs at least 2 images: pass more samples.')
  classifier = _default_classifier() if classifier is None else classifier
  predictions = classifier.predict(images)
  class_counts = np.bincount(predictions, minlength=NUM_CLASSES)
  report = {'class_counts': [int(c) for c in class_counts],
            'num_classes_present': int(np.sum(class_counts > 0))}
  if labels is not None:
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != predictions.shape[0]:
      raise ValueError(f'got {labels.shape[0]} labels for {predictions.shape[0]} images: pass one label per image.')
    report['accuracy'] = float(np.mean(predictions == labels))
  mu, sigma = metrics.feature_statistics(classifier.features(images))
  report['frechet_distance'] = metrics.frechet_distance(mu, sigma, classifier.real_mu, classifier.real_sigma)
  return report

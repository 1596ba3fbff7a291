"""Tests of the digits classifier: accuracy, the uint8 round trip, resizing and the Frechet distance."""

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import StratifiedKFold

from pdm_jax.evaluation import digits_classifier


@pytest.fixture(scope='module')
def classifier():
  return digits_classifier.train_digits_classifier(seed=0)


@pytest.fixture(scope='module')
def real():
  return digits_classifier.real_digits_uint8()


def test_cross_validated_accuracy_is_high():
  digits = load_digits()
  pixels = digits.images.reshape(-1, 64)
  accuracies = []
  for train, test in StratifiedKFold(3, shuffle=True, random_state=0).split(pixels, digits.target):
    mlp = digits_classifier.fit_mlp(pixels[train], digits.target[train])
    accuracies.append(np.mean(mlp.predict(pixels[test] / 16.0) == digits.target[test]))
  assert np.mean(accuracies) >= 0.95, accuracies


def test_uint8_scale_inverts_the_pipeline(real):
  images, _ = real
  # The pipeline: digits / 16 * 2 - 1 in [-1, 1], then samples back to uint8 via (x + 1) / 2 * 255.
  model_scale = load_digits().images / 16.0 * 2 - 1
  sampled = np.round((model_scale + 1) / 2 * 255).astype(np.uint8)[..., None]
  np.testing.assert_array_equal(sampled, images)
  recovered = digits_classifier.to_digits_scale(images).reshape(-1, 8, 8)
  np.testing.assert_allclose(recovered, load_digits().images, atol=16 / 255)


def test_upsampled_images_are_recognised(classifier, real):
  images, labels = real
  subset = slice(0, 300)
  native = classifier.predict(images[subset])
  nearest_32 = images[subset].repeat(4, axis=1).repeat(4, axis=2)  # area averaging inverts this exactly
  np.testing.assert_array_equal(classifier.predict(nearest_32), native)
  odd_12 = images[subset, :, :, 0].repeat(3, axis=1).repeat(3, axis=2)[:, ::2, ::2]  # 12x12, not a multiple of 8
  assert np.mean(classifier.predict(odd_12) == labels[subset]) > 0.8


def test_report_on_real_digits(classifier, real):
  images, labels = real
  report = digits_classifier.digits_report(images, labels, classifier)
  assert report['accuracy'] > 0.97
  assert report['num_classes_present'] == 10
  assert sum(report['class_counts']) == len(images)
  assert abs(report['frechet_distance']) < 1e-3


def test_shuffled_labels_give_chance_accuracy(classifier, real):
  images, labels = real
  shuffled = np.random.default_rng(0).permutation(labels)
  report = digits_classifier.digits_report(images, shuffled, classifier)
  assert abs(report['accuracy'] - 0.1) < 0.03


def test_frechet_distance_grows_with_noise(classifier, real):
  images, _ = real
  rng = np.random.default_rng(0)
  distances = []
  for noise_std in (0, 8, 24, 64):
    noisy = np.clip(images + rng.normal(0, noise_std, images.shape), 0, 255).round().astype(np.uint8)
    distances.append(digits_classifier.digits_report(noisy, classifier=classifier)['frechet_distance'])
  assert np.all(np.diff(distances) > 0), distances


def test_collapsed_samples_show_missing_classes(classifier, real):
  images, labels = real
  ones = images[labels == 1][:50]
  with pytest.warns(RuntimeWarning, match='singular'):  # 50 samples < 64 feature dims
    report = digits_classifier.digits_report(ones, classifier=classifier)
  assert report['num_classes_present'] <= 2
  assert 'accuracy' not in report


@pytest.mark.parametrize('images, match', [
    (np.zeros((4, 8, 8, 3), np.uint8), 'single-channel'),
    (np.zeros((4, 8, 6), np.uint8), 'square'),
    (np.zeros((4, 8, 8), np.float32), 'uint8'),
])
def test_bad_images_raise(classifier, images, match):
  with pytest.raises(ValueError, match=match):
    classifier.predict(images)


def test_wrong_number_of_labels_raises(classifier, real):
  images, labels = real
  with pytest.raises(ValueError, match='one label per image'):
    digits_classifier.digits_report(images[:10], labels[:9], classifier)

"""The embedded digits pipeline: values, labels, determinism, resume and per-host slices."""

import itertools

import numpy as np
import pytest

from pdm_jax import data
from pdm_jax.data import digits
from tests.conftest import tiny_config


def _take(iterator, count):
  return list(itertools.islice(iterator, count))


def test_arrays_are_real_digits_in_range():
  images, labels = digits.load_digits_arrays()
  assert images.shape == (1797, 8, 8, 1) and images.dtype == np.float32
  assert images.min() == -1.0 and images.max() == 1.0
  assert sorted(np.unique(labels)) == list(range(10))
  resized, _ = digits.load_digits_arrays(16)
  assert resized.shape == (1797, 16, 16, 1) and -1.0 <= resized.min() and resized.max() <= 1.0


def test_batches_shape_labels_and_epoch_coverage():
  config = tiny_config().data
  info, batches = data.build(config, global_batch_size=599, seed=3)
  assert info.num_classes == 10 and info.num_examples == 1797 and info.image_size == 8
  first_epoch = _take(batches, 3)  # 3 x 599 = 1797: exactly one epoch
  images = np.concatenate([b['image'] for b in first_epoch])
  all_images, _ = digits.load_digits_arrays()
  # Every example appears once per epoch: the multiset of images matches the data set.
  key = lambda arr: np.sort(arr.reshape(len(arr), -1).sum(1))
  np.testing.assert_allclose(key(images), key(all_images))
  assert first_epoch[0]['label'].dtype == np.int32


def test_same_seed_same_batches_and_other_seed_differs():
  config = tiny_config().data
  a = _take(data.build(config, global_batch_size=32, seed=0)[1], 5)
  b = _take(data.build(config, global_batch_size=32, seed=0)[1], 5)
  c = _take(data.build(config, global_batch_size=32, seed=1)[1], 5)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['image'], y['image'])
  assert not np.array_equal(a[0]['image'], c[0]['image'])


def test_resume_continues_with_the_batches_it_would_have_seen():
  config = tiny_config().data
  uninterrupted = _take(data.build(config, global_batch_size=100, seed=0)[1], 40)  # crosses epochs
  resumed = _take(data.build(config, global_batch_size=100, seed=0, start_step=33)[1], 7)
  for x, y in zip(uninterrupted[33:], resumed):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])


def test_two_hosts_read_disjoint_halves_of_the_global_batch():
  config = tiny_config().data
  whole = next(data.build(config, global_batch_size=64, seed=0)[1])
  host0 = next(data.build(config, global_batch_size=64, seed=0, process_index=0, process_count=2)[1])
  host1 = next(data.build(config, global_batch_size=64, seed=0, process_index=1, process_count=2)[1])
  assert host0['image'].shape == (32, 8, 8, 1)
  np.testing.assert_array_equal(np.concatenate([host0['image'], host1['image']]), whole['image'])


def test_unlabelled_config_yields_no_labels():
  config = tiny_config('pdm').data
  info, batches = data.build(config, global_batch_size=8, seed=0)
  assert info.num_classes is None and 'label' not in next(batches)


def test_batch_must_split_over_hosts():
  with pytest.raises(ValueError, match='multiple of 3'):
    data.build(tiny_config().data, global_batch_size=16, seed=0, process_count=3)

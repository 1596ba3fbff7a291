"""tfds pipelines on mocked datasets whose images encode their own index, so every batch can be audited."""

import re
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from configs import default
from pdm_jax.data import sharding
from pdm_jax.data import subsets
from pdm_jax.data import tfds_pipeline

# Examples of each split get ids from these bases, so ids of a sum of splits never collide.
SPLIT_BASE = {'train': 0, 'test': 1000, 'validation': 2000, 'unlabelled': 3000}
SHARD_LENGTHS = {
    'cifar10': {'train': [13, 12], 'test': [7]},
    'celeb_a': {'train': [40, 35], 'validation': [5], 'test': [5]},
    'eurosat/rgb': {'train': [21]},
    'stl10': {'train': [10, 6], 'test': [9], 'unlabelled': [12]},
}
# Per dataset: overrides of the data config, the ids a full pass must cover, and the label of an id.
CASES = {
    'cifar10': (dict(split='train', image_size=32), range(25), lambda i: i % 10),
    # Ids divisible by 3 are men (25 of 75); 8 men and 8 women form the balanced subset.
    'celeb_a': (dict(split='train', image_size=32, examples_per_class=8), None, lambda i: 0 if i % 3 == 0 else 1),
    'eurosat/rgb': (dict(split='train', image_size=64), range(21), lambda i: i % 10),
    'stl10': (dict(split='train+test', image_size=96), [*range(16), *range(1000, 1009)], lambda i: i % 10),
}
_SHARD_NAME = re.compile(r'-(\w+)\.tfrecord-(\d+)-of-')


def _fake_as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False, **unused_kwargs):
  """Stands in for tfds reading: honours split slicing; pixel channels 0/1 hold the id, channel 2 a left-right ramp."""
  del decoders, read_config, shuffle_files  # the pipeline always asks for encoded images, in file order
  ids = []
  for instruction in self.info.splits[split].file_instructions:
    split_name, shard = _SHARD_NAME.search(instruction.filename).groups()
    first = SPLIT_BASE[split_name] + sum(self.info.splits[split_name].shard_lengths[:int(shard)]) + instruction.skip
    ids.extend(range(first, first + instruction.take))
  height, width, _ = self.info.features['image'].shape
  ramp = tf.cast(tf.linspace(0.0, 255.0, width), tf.uint8)
  name = self.name

  def make(index):
    plane = lambda value: tf.fill((height, width), tf.cast(value, tf.uint8))
    image = tf.stack([plane(index % 256), plane(index // 256), tf.broadcast_to(ramp, (height, width))], axis=-1)
    example = {'image': tf.io.encode_png(image)}
    if name == 'celeb_a':
      example['attributes'] = {'Male': index % 3 == 0, 'Smiling': index % 2 == 0}
    else:
      example['label'] = tf.where(index >= SPLIT_BASE['unlabelled'], tf.constant(-1, tf.int64), index % 10)
    return example

  return tf.data.Dataset.from_tensor_slices(np.array(ids, np.int64)).map(make)


@pytest.fixture(scope='module')
def metadata_dir(tmp_path_factory):
  """A tfds data_dir holding only metadata (split and shard sizes) for the four catalogue datasets."""
  root = tmp_path_factory.mktemp('tfds')
  for name, splits in SHARD_LENGTHS.items():
    builder = tfds.builder(name, data_dir=str(root), try_gcs=False)
    template = tfds.core.ShardedFileTemplate(
        data_dir=builder.data_path, template='{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}',
        dataset_name=builder.name, filetype_suffix='tfrecord')
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=split, shard_lengths=lengths, num_bytes=0, filename_template=template)
        for split, lengths in splits.items()]))
    builder.data_path.mkdir(parents=True, exist_ok=True)
    builder.info.write_to_directory(builder.data_path)
  return root


@pytest.fixture
def fake_tfds(metadata_dir):
  """tfds mocked to read the fake examples above, with real split sizes and slicing."""
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(metadata_dir),
                              as_dataset_fn=_fake_as_dataset):
    yield metadata_dir


def _config(name, **overrides):
  """The default data config pointed at a dataset, with flips and labels on."""
  config = default.get_config().data
  config.name = name
  config.num_channels = 3
  config.random_flip = True
  config.use_labels = True
  overrides = {**CASES[name][0], **overrides} if name in CASES else overrides
  for key, value in overrides.items():
    config[key] = value
  return config


def _batches(config, count=None, **kwargs):
  """(info, list of batches): the first `count` batches, or all of them for a finite pass."""
  kwargs = {'global_batch_size': 4, 'seed': 0, **kwargs}
  info, iterator = tfds_pipeline.build(config, **kwargs)
  if count is None:
    return info, list(iterator)
  return info, [next(iterator) for _ in range(count)]


def _audit(images):
  """images (B, H, W, 3) in [-1, 1] -> (ids (B,), flipped (B,)) read back from the fake pixels."""
  pixels = np.rint((images + 1.0) * 127.5).astype(np.int64)
  return pixels[:, 0, 0, 0] + 256 * pixels[:, 0, 0, 1], pixels[:, 0, 0, 2] > pixels[:, 0, -1, 2]


def _expected_ids(name):
  """Ids of the examples a full pass of CASES[name] must yield."""
  if CASES[name][1] is not None:
    return sorted(CASES[name][1])
  labels = np.array([CASES[name][2](i) for i in range(75)])
  return sorted(subsets.balanced_subset(labels, 2, CASES[name][0]['examples_per_class'], seed=0))


@pytest.mark.parametrize('name', sorted(CASES))
def test_batches_have_the_contract_shapes_range_and_labels(fake_tfds, name):
  info, batches = _batches(_config(name), count=3)
  size = CASES[name][0]['image_size']
  assert info.image_size == size and info.num_channels == 3
  assert info.num_examples == len(_expected_ids(name))
  assert info.num_classes == (2 if name == 'celeb_a' else 10)
  for batch in batches:
    assert set(batch) == {'image', 'label'}
    assert batch['image'].shape == (4, size, size, 3) and batch['image'].dtype == np.float32
    assert batch['label'].shape == (4,) and batch['label'].dtype == np.int32
    assert -1.0 <= batch['image'].min() and batch['image'].max() <= 1.0
    ids, _ = _audit(batch['image'])
    assert set(ids) <= set(_expected_ids(name))
    np.testing.assert_array_equal(batch['label'], [CASES[name][2](i) for i in ids])


@pytest.mark.parametrize('name', sorted(CASES))
def test_flips_only_in_training(fake_tfds, name):
  _, flipped = _batches(_config(name, random_flip=True), count=10)
  _, plain = _batches(_config(name, random_flip=False), count=10)
  _, evaluated = _batches(_config(name, random_flip=True), train=False)
  flips = []
  for with_flip, without in zip(flipped, plain):
    ids, flip = _audit(with_flip['image'])
    plain_ids, plain_flip = _audit(without['image'])
    np.testing.assert_array_equal(ids, plain_ids)  # flipping never changes which examples come
    assert not plain_flip.any()
    mirrored = np.where(flip[:, None, None, None], without['image'][:, :, ::-1], without['image'])
    np.testing.assert_array_equal(with_flip['image'], mirrored)
    flips.extend(flip)
  assert 0 < sum(flips) < len(flips)
  assert not any(_audit(batch['image'])[1].any() for batch in evaluated)


@pytest.mark.parametrize('name', sorted(CASES))
@pytest.mark.parametrize('process_count', [2, 3])
def test_hosts_read_disjoint_slices_covering_the_split(fake_tfds, name, process_count):
  per_host = []
  for process_index in range(process_count):
    _, batches = _batches(_config(name), train=False, global_batch_size=2 * process_count,
                          process_index=process_index, process_count=process_count)
    per_host.append(np.concatenate([_audit(batch['image'])[0] for batch in batches]))
  together = np.concatenate(per_host)
  assert len(set(together)) == len(together)  # disjoint, and no host reads an example twice
  assert sorted(together) == _expected_ids(name)
  assert max(map(len, per_host)) - min(map(len, per_host)) <= 2  # near-equal shares


def test_train_false_is_one_ordered_pass(fake_tfds):
  _, first = _batches(_config('cifar10'), train=False, global_batch_size=8)
  _, second = _batches(_config('cifar10'), train=False, global_batch_size=8, seed=7)
  assert [len(batch['label']) for batch in first] == [8, 8, 8, 1]  # the short last batch is kept
  for one, other in zip(first, second):
    np.testing.assert_array_equal(one['image'], other['image'])


@pytest.mark.parametrize('name', ['cifar10', 'celeb_a'])
def test_same_seed_same_batches_other_seed_other_order(fake_tfds, name):
  _, one = _batches(_config(name), count=8, seed=3)
  _, again = _batches(_config(name), count=8, seed=3)
  _, other = _batches(_config(name), count=8, seed=4)
  for first, second in zip(one, again):
    np.testing.assert_array_equal(first['image'], second['image'])
    np.testing.assert_array_equal(first['label'], second['label'])
  assert any((first['label'] != third['label']).any() for first, third in zip(one, other))


@pytest.mark.parametrize('name,start_step,process_index', [('cifar10', 7, 0), ('cifar10', 13, 1), ('celeb_a', 9, 0)])
def test_resume_yields_what_an_uninterrupted_run_would(fake_tfds, name, start_step, process_index):
  # 25 examples (13 per host) or a 16-example subset in batches of 4: the resumed step lies epochs in.
  hosts = dict(process_index=process_index, process_count=2, global_batch_size=8)
  _, uninterrupted = _batches(_config(name), count=start_step + 6, seed=5, **hosts)
  _, resumed = _batches(_config(name), count=6, seed=5, start_step=start_step, **hosts)
  for expected, actual in zip(uninterrupted[start_step:], resumed):
    np.testing.assert_array_equal(expected['image'], actual['image'])
    np.testing.assert_array_equal(expected['label'], actual['label'])


def test_every_example_once_per_epoch(fake_tfds):
  _, batches = _batches(_config('eurosat/rgb'), count=21, global_batch_size=3)  # 21 x 3 = three epochs of 21
  ids = np.concatenate([_audit(batch['image'])[0] for batch in batches]).reshape(3, 21)
  for epoch in ids:
    assert sorted(epoch) == list(range(21))
  assert (ids[0] != ids[1]).any()  # each epoch has its own order


def test_celeb_a_defaults_follow_the_reference(fake_tfds):
  # 176x176 squashed faces, Male -> 0; the subset is shrunk to fit the 75 fake faces.
  config = _config('celeb_a', examples_per_class=5)
  del config['image_size']
  info, batches = _batches(config, count=1)
  assert info.image_size == 176 and info.num_examples == 10
  assert batches[0]['image'].shape == (4, 176, 176, 3)


def test_celeb_a_other_attribute(fake_tfds):
  _, batches = _batches(_config('celeb_a', attribute='Smiling'), count=4)
  for batch in batches:
    ids, _ = _audit(batch['image'])
    np.testing.assert_array_equal(batch['label'], np.where(ids % 2 == 0, 0, 1))


def test_stl10_unlabelled_split_for_pdm(fake_tfds):
  info, batches = _batches(_config('stl10', split='unlabelled', use_labels=False), train=False)
  assert info.num_classes is None and info.num_examples == 12
  assert all(set(batch) == {'image'} for batch in batches)
  assert sorted(np.concatenate([_audit(batch['image'])[0] for batch in batches])) == list(range(3000, 3012))


def test_labels_left_out_for_pdm(fake_tfds):
  info, batches = _batches(_config('cifar10', use_labels=False), count=1)
  assert info.num_classes == 10 and set(batches[0]) == {'image'}


@pytest.mark.parametrize('name', sorted(CASES))
def test_plain_mock_data_works(name):
  # What a smoke test gets from tfds.testing.mock_data with no metadata: random examples, unknown split sizes.
  config = _config(name, examples_per_class=0) if name == 'celeb_a' else _config(name)
  with tfds.testing.mock_data(num_examples=6):
    info, batches = _batches(config, count=2)
  assert info.num_examples == 6
  assert batches[1]['image'].shape == (4, config.image_size, config.image_size, 3)
  assert batches[1]['label'].shape == (4,)


def test_unknown_dataset_lists_the_valid_ones():
  with pytest.raises(ValueError, match=r"unknown dataset data.name='mnist'.*cifar10, celeb_a, eurosat/rgb, stl10"):
    tfds_pipeline.build(_config('mnist'), global_batch_size=4, seed=0)


def test_unknown_celeb_a_attribute(tmp_path):
  with pytest.raises(ValueError, match=r"data.attribute='Beard' is not a celeb_a attribute: use one of .*Male"):
    tfds_pipeline.build(_config('celeb_a', attribute='Beard', data_dir=str(tmp_path)), global_batch_size=4, seed=0)


def test_spdm_on_unlabelled_split():
  with pytest.raises(ValueError, match="s-PDM needs labels: stl10 split 'unlabelled' has none"):
    tfds_pipeline.build(_config('stl10', split='unlabelled'), global_batch_size=4, seed=0)


def test_subset_larger_than_a_class(fake_tfds):
  with pytest.raises(ValueError, match='class 0 has 25 examples in celeb_a train, fewer than'):
    tfds_pipeline.build(_config('celeb_a', examples_per_class=30), global_batch_size=4, seed=0)


def test_bad_resize_mode_and_host_numbering():
  with pytest.raises(ValueError, match="resize_mode='crop' is unknown"):
    tfds_pipeline.build(_config('cifar10', resize_mode='crop'), global_batch_size=4, seed=0)
  with pytest.raises(ValueError, match=r'process_index=2 must lie in \[0, process_count=2\)'):
    tfds_pipeline.build(_config('cifar10'), global_batch_size=4, seed=0, process_index=2, process_count=2)
  with pytest.raises(ValueError, match='does not split over 3 hosts'):
    tfds_pipeline.build(_config('cifar10'), global_batch_size=4, seed=0, process_count=3)


def test_unprepared_data_fails_at_once_naming_the_fix(tmp_path):
  start = time.monotonic()
  with pytest.raises(FileNotFoundError) as error:
    tfds_pipeline.build(_config('cifar10', data_dir=str(tmp_path)), global_batch_size=4, seed=0)
  assert time.monotonic() - start < 10  # no download attempt, no retries
  message = str(error.value)
  assert '\n' not in message and f'data_dir={tmp_path}' in message
  assert f'python scripts/prepare_data.py --dataset=cifar10 --data_dir={tmp_path}' in message


def test_tfds_data_dir_is_honoured(tmp_path, monkeypatch):
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'from_env'))
  with pytest.raises(FileNotFoundError, match=f'data_dir={tmp_path}/from_env'):
    tfds_pipeline.build(_config('eurosat/rgb'), global_batch_size=4, seed=0)
  # An explicit data.data_dir wins over the environment.
  with pytest.raises(FileNotFoundError, match=f'data_dir={tmp_path}/from_config'):
    tfds_pipeline.build(_config('eurosat/rgb', data_dir=str(tmp_path / 'from_config')), global_batch_size=4, seed=0)


def test_balanced_subset_is_seeded_and_balanced():
  labels = np.array([0, 1, 1, 0, 1, 0, 1, 1, 0, 0])
  chosen = subsets.balanced_subset(labels, 2, 3, seed=1)
  assert list(chosen) == sorted(chosen) and len(set(chosen)) == 6
  assert np.bincount(labels[chosen]).tolist() == [3, 3]
  np.testing.assert_array_equal(chosen, subsets.balanced_subset(labels, 2, 3, seed=1))


@pytest.mark.parametrize('num_examples,process_count', [(25, 2), (10, 3), (7, 7), (3, 4)])
def test_host_bounds_tile_the_examples(num_examples, process_count):
  bounds = [sharding.host_bounds(num_examples, index, process_count) for index in range(process_count)]
  assert bounds[0][0] == 0 and bounds[-1][1] == num_examples
  assert all(stop == start for (_, stop), (start, _) in zip(bounds, bounds[1:]))
  assert max(stop - start for start, stop in bounds) - min(stop - start for start, stop in bounds) <= 1


def test_resume_position():
  assert sharding.resume_position(0, 4, 25) == (0, 0)
  assert sharding.resume_position(7, 4, 25) == (1, 3)
  with pytest.raises(ValueError, match='start_step=-1'):
    sharding.resume_position(-1, 4, 25)

"""Image-folder pipelines on tiny folders whose images encode their own id, so every batch can be audited."""

import numpy as np
import pytest
from PIL import Image

from configs import default
from pdm_jax.data import image_folder

SIZE = 8
CLASSES = ('cat', 'dog', 'fox')
PER_CLASS = 5


def _write(path, image_id, size=(SIZE, SIZE), mode='RGB'):
  """Saves an image whose channel 0 is image_id and channel 2 a left-right ramp."""
  width, height = size
  pixels = np.zeros((height, width, 3), np.uint8)
  pixels[..., 0] = image_id
  pixels[..., 2] = np.linspace(0, 255, width).astype(np.uint8)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(pixels).convert(mode).save(path)


@pytest.fixture
def class_folder(tmp_path):
  """3 class sub-folders of 5 PNG images each; id = 10 * class + index."""
  for label, name in enumerate(CLASSES):
    for index in range(PER_CLASS):
      _write(tmp_path / 'images' / name / f'{index}.png', 10 * label + index)
  return tmp_path / 'images'


def _config(root, **overrides):
  config = default.get_config().data
  config.name = 'image_folder'
  config.data_dir = str(root)
  config.image_size = SIZE
  config.num_channels = 3
  config.random_flip = True
  config.use_labels = True
  for key, value in overrides.items():
    config[key] = value
  return config


def _batches(config, count=None, **kwargs):
  kwargs = {'global_batch_size': 4, 'seed': 0, **kwargs}
  info, iterator = image_folder.build(config, **kwargs)
  return info, list(iterator) if count is None else [next(iterator) for _ in range(count)]


def _audit(images):
  """images (B, H, W, 3) in [-1, 1] -> (ids (B,), flipped (B,))."""
  pixels = np.rint((images + 1.0) * 127.5).astype(np.int64)
  return pixels[:, 0, 0, 0], pixels[:, 0, 0, 2] > pixels[:, 0, -1, 2]


ALL_IDS = sorted(10 * label + index for label in range(len(CLASSES)) for index in range(PER_CLASS))


def test_batches_have_the_contract_shapes_range_and_labels(class_folder):
  info, batches = _batches(_config(class_folder), count=6)
  assert info == image_folder.types.DatasetInfo('image_folder', SIZE, 3, num_classes=3, num_examples=15)
  for batch in batches:
    assert batch['image'].shape == (4, SIZE, SIZE, 3) and batch['image'].dtype == np.float32
    assert batch['label'].shape == (4,) and batch['label'].dtype == np.int32
    assert -1.0 <= batch['image'].min() and batch['image'].max() <= 1.0
    ids, _ = _audit(batch['image'])
    np.testing.assert_array_equal(batch['label'], ids // 10)  # labels follow the sorted class folders


def test_flips_only_in_training(class_folder):
  _, flipped = _batches(_config(class_folder, random_flip=True), count=10)
  _, plain = _batches(_config(class_folder, random_flip=False), count=10)
  flips = []
  for with_flip, without in zip(flipped, plain):
    ids, flip = _audit(with_flip['image'])
    assert (ids == _audit(without['image'])[0]).all() and not _audit(without['image'])[1].any()
    mirrored = np.where(flip[:, None, None, None], without['image'][:, :, ::-1], without['image'])
    np.testing.assert_array_equal(with_flip['image'], mirrored)
    flips.extend(flip)
  assert 0 < sum(flips) < len(flips)
  _, evaluated = _batches(_config(class_folder, random_flip=True), train=False)
  assert not any(_audit(batch['image'])[1].any() for batch in evaluated)


@pytest.mark.parametrize('process_count', [2, 3])
def test_hosts_read_disjoint_slices_covering_the_folder(class_folder, process_count):
  per_host = []
  for process_index in range(process_count):
    _, batches = _batches(_config(class_folder), train=False, global_batch_size=2 * process_count,
                          process_index=process_index, process_count=process_count)
    per_host.append(np.concatenate([_audit(batch['image'])[0] for batch in batches]))
  together = np.concatenate(per_host)
  assert len(set(together)) == len(together) and sorted(together) == ALL_IDS
  assert max(map(len, per_host)) - min(map(len, per_host)) <= 1


def test_same_seed_same_batches_and_exact_resume(class_folder):
  _, one = _batches(_config(class_folder), count=12, seed=2)
  _, again = _batches(_config(class_folder), count=12, seed=2)
  _, other = _batches(_config(class_folder), count=12, seed=9)
  _, resumed = _batches(_config(class_folder), count=4, seed=2, start_step=8)  # 32 examples in: epoch 2
  for first, second in zip(one, again):
    np.testing.assert_array_equal(first['image'], second['image'])
  assert any((first['label'] != third['label']).any() for first, third in zip(one, other))
  for expected, actual in zip(one[8:], resumed):
    np.testing.assert_array_equal(expected['image'], actual['image'])
    np.testing.assert_array_equal(expected['label'], actual['label'])
  epochs = np.concatenate([_audit(batch['image'])[0] for batch in one])[:45].reshape(3, 15)
  assert all(sorted(epoch) == ALL_IDS for epoch in epochs)  # every image once per epoch


def test_flat_folder_is_unlabelled(tmp_path):
  for index in range(6):
    _write(tmp_path / f'{index}.png', index)
  info, batches = _batches(_config(tmp_path, use_labels=False), train=False)
  assert info.num_classes is None and info.num_examples == 6
  assert set(batches[0]) == {'image'}
  assert sorted(np.concatenate([_audit(batch['image'])[0] for batch in batches])) == list(range(6))
  with pytest.raises(ValueError, match=f's-PDM needs labels: {tmp_path} is a flat folder'):
    image_folder.build(_config(tmp_path), global_batch_size=4, seed=0)


def test_grey_and_jpeg_images_become_rgb(tmp_path):
  _write(tmp_path / 'a' / 'grey.png', 0, mode='L')
  _write(tmp_path / 'b' / 'colour.JPG', 0)
  _, batches = _batches(_config(tmp_path), train=False, global_batch_size=2)
  assert batches[0]['image'].shape == (2, SIZE, SIZE, 3)
  assert sorted(batches[0]['label']) == [0, 1]


def test_mixed_sizes_need_a_resize(tmp_path):
  _write(tmp_path / 'a' / 'small.png', 0, size=(SIZE, SIZE))
  _write(tmp_path / 'a' / 'wide.png', 1, size=(12, SIZE))
  with pytest.raises(ValueError, match=r"images of mixed sizes .* set data.resize_mode='center_crop' or 'squash'"):
    image_folder.build(_config(tmp_path), global_batch_size=2, seed=0)
  for mode in ('center_crop', 'squash'):
    _, batches = _batches(_config(tmp_path, resize_mode=mode), train=False, global_batch_size=2)
    assert batches[0]['image'].shape == (2, SIZE, SIZE, 3)


def test_center_crop_keeps_the_middle(tmp_path):
  pixels = np.zeros((4, 8, 3), np.uint8)
  pixels[:, 2:6] = 255  # a white centre square between black side bands
  Image.fromarray(pixels).save(tmp_path / 'wide.png')
  _, batches = _batches(_config(tmp_path, image_size=4, resize_mode='center_crop', use_labels=False),
                        train=False, global_batch_size=1)
  np.testing.assert_array_equal(batches[0]['image'], np.ones((1, 4, 4, 3), np.float32))


def test_size_other_than_image_size(tmp_path):
  _write(tmp_path / 'a' / 'big.png', 0, size=(16, 16))
  with pytest.raises(ValueError, match='images are 16x16, not data.image_size=8'):
    image_folder.build(_config(tmp_path), global_batch_size=2, seed=0)


def test_folder_without_images(tmp_path):
  (tmp_path / 'empty_class').mkdir()
  (tmp_path / 'notes.txt').write_text('not an image')
  with pytest.raises(ValueError, match=f'no images .* in {tmp_path}'):
    image_folder.build(_config(tmp_path), global_batch_size=2, seed=0)
  with pytest.raises(FileNotFoundError, match='does not exist'):
    image_folder.build(_config(tmp_path / 'missing'), global_batch_size=2, seed=0)
  with pytest.raises(ValueError, match='needs data.data_dir'):
    image_folder.build(_config(tmp_path, data_dir=None), global_batch_size=2, seed=0)


def test_loose_images_beside_class_folders(class_folder):
  _write(class_folder / 'stray.png', 99)
  with pytest.raises(ValueError, match='holds both images and class sub-folders'):
    image_folder.build(_config(class_folder), global_batch_size=2, seed=0)


def test_unreadable_files_are_skipped_and_named(class_folder, caplog):
  (class_folder / 'cat' / 'empty.png').write_bytes(b'')
  (class_folder / 'dog' / 'page.jpg').write_text('<html>not an image</html>')
  with caplog.at_level('WARNING'):
    info, batches = _batches(_config(class_folder), train=False, global_batch_size=5)
  assert info.num_examples == len(ALL_IDS)
  assert sorted(np.concatenate([_audit(batch['image'])[0] for batch in batches])) == ALL_IDS
  # Labels still line up with their images after the skip: id // 10 is the class.
  for batch in batches:
    np.testing.assert_array_equal(batch['label'], _audit(batch['image'])[0] // 10)
  warning = ' '.join(record.getMessage() for record in caplog.records)
  assert 'Skipping 2 of 17 image files that cannot be read' in warning
  assert 'empty.png' in warning and 'page.jpg' in warning


def test_a_folder_of_only_unreadable_files_is_an_error(tmp_path):
  (tmp_path / 'a.png').write_bytes(b'\x89PNG broken')
  with pytest.raises(ValueError, match=r'none of the 1 image files under .* can be read \(e.g. a.png\)'):
    image_folder.build(_config(tmp_path, use_labels=False), global_batch_size=1, seed=0)

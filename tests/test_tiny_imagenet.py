"""The Tiny ImageNet builder, prepared for real from a small archive laid out like tiny-imagenet-200.zip."""

import io
import pathlib
import sys
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs import default
from pdm_jax.data import tfds_pipeline
from pdm_jax.data import tiny_imagenet

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'scripts'))
import prepare_data  # pylint: disable=g-import-not-at-top,wrong-import-position

# 200 WordNet ids, listed in wnids.txt out of order so the builder must sort them.
WNIDS = [f'n{(index * 7919) % 100_000:08d}' for index in range(200)]
SORTED = sorted(WNIDS)
PER_CLASS = 2
VALIDATION = [(f'val_{index}.JPEG', WNIDS[(index * 37) % 200], index % 3) for index in range(10)]


def _jpeg(label: int, copy: int, grey: bool = False) -> bytes:
  """A 64x64 JPEG whose colour codes (label, copy); the right half of channel 2 is white to reveal flips."""
  pixels = np.zeros((64, 64, 3), np.uint8)
  pixels[..., 0] = label % 16 * 16 + 8
  pixels[..., 1] = label // 16 * 16 + 8
  pixels[:, :32, 2] = copy * 64 + 32
  pixels[:, 32:, 2] = 255
  image = Image.fromarray(pixels)
  buffer = io.BytesIO()
  (image.convert('L') if grey else image).save(buffer, format='JPEG', quality=95)
  return buffer.getvalue()


def _audit(images):
  """images (B, 64, 64, 3) in [-1, 1] -> (sorted-class labels (B,), copies (B,), flipped (B,))."""
  pixels = np.rint((images + 1.0) * 127.5).astype(np.int64)
  flipped = pixels[:, 0, 0, 2] > 200
  left = np.where(flipped, pixels[:, 0, -1, 2], pixels[:, 0, 0, 2])
  return pixels[:, 0, 0, 0] // 16 + 16 * (pixels[:, 0, 0, 1] // 16), left // 64, flipped


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """(data_dir, manual_dir) after preparing the small archive through scripts/prepare_data.py."""
  root = tmp_path_factory.mktemp('tiny')
  manual_dir, data_dir = root / 'manual', root / 'tfds'
  manual_dir.mkdir()
  with zipfile.ZipFile(manual_dir / 'tiny-imagenet-200.zip', 'w') as archive:
    archive.writestr('tiny-imagenet-200/wnids.txt', '\n'.join(WNIDS) + '\n')
    archive.writestr('tiny-imagenet-200/words.txt', ''.join(f'{wnid}\tthing {wnid}\n' for wnid in WNIDS))
    for wnid in WNIDS:
      label = SORTED.index(wnid)
      archive.writestr(f'tiny-imagenet-200/train/{wnid}/{wnid}_boxes.txt', '')
      for copy in range(PER_CLASS):
        archive.writestr(f'tiny-imagenet-200/train/{wnid}/images/{wnid}_{copy}.JPEG',
                         _jpeg(label, copy, grey=(label == 5 and copy == 1)))
    archive.writestr('tiny-imagenet-200/val/val_annotations.txt',
                     ''.join(f'{name}\t{wnid}\t0\t0\t63\t63\n' for name, wnid, _ in VALIDATION))
    for name, wnid, copy in VALIDATION:
      archive.writestr(f'tiny-imagenet-200/val/images/{name}', _jpeg(SORTED.index(wnid), copy))
    archive.writestr('tiny-imagenet-200/test/images/test_0.JPEG', _jpeg(0, 0))
  prepare_data.main(['--dataset=tiny_imagenet', f'--data_dir={data_dir}', f'--manual_dir={manual_dir}'])
  return data_dir, manual_dir


def _config(data_dir, **overrides):
  config = default.get_config().data
  config.name = 'tiny_imagenet'
  config.data_dir = str(data_dir)
  config.image_size = 64
  config.num_channels = 3
  config.random_flip = True
  config.use_labels = True
  config.examples_per_class = 0
  for key, value in overrides.items():
    config[key] = value
  return config


def _batches(config, count=None, **kwargs):
  kwargs = {'global_batch_size': 8, 'seed': 0, **kwargs}
  info, iterator = tfds_pipeline.build(config, **kwargs)
  return info, list(iterator) if count is None else [next(iterator) for _ in range(count)]


def test_builder_splits_labels_and_features(prepared):
  data_dir, _ = prepared
  builder = tfds.builder('tiny_imagenet', data_dir=str(data_dir), try_gcs=False)
  assert builder.is_prepared()
  assert builder.info.splits['train'].num_examples == 200 * PER_CLASS
  assert builder.info.splits['validation'].num_examples == len(VALIDATION)
  assert builder.info.features['label'].names == SORTED
  validation = {example['id'].decode(): example
                for example in tfds.as_numpy(builder.as_dataset(split='validation'))}
  assert sorted(validation) == sorted(name[:-len('.JPEG')] for name, _, _ in VALIDATION)
  for name, wnid, _ in VALIDATION:
    example = validation[name[:-len('.JPEG')]]
    assert example['label'] == SORTED.index(wnid)  # labels come from val_annotations.txt
    assert example['image'].shape == (64, 64, 3)


def test_pipeline_batches_and_labels(prepared):
  info, batches = _batches(_config(prepared[0]), count=5)
  assert info == tfds_pipeline.types.DatasetInfo('tiny_imagenet', 64, 3, num_classes=200, num_examples=400)
  for batch in batches:
    assert batch['image'].shape == (8, 64, 64, 3) and batch['image'].dtype == np.float32
    assert -1.0 <= batch['image'].min() and batch['image'].max() <= 1.0
    assert batch['label'].dtype == np.int32
    np.testing.assert_array_equal(batch['label'], _audit(batch['image'])[0])


def test_validation_split_and_grey_image(prepared):
  _, batches = _batches(_config(prepared[0], split='validation'), train=False, global_batch_size=4)
  labels = np.concatenate([batch['label'] for batch in batches])
  assert sorted(labels) == sorted(SORTED.index(wnid) for _, wnid, _ in VALIDATION)
  _, batches = _batches(_config(prepared[0]), train=False, global_batch_size=400)
  images = batches[0]['image']
  grey = (images[..., 0] == images[..., 1]).all(axis=(1, 2)) & (images[..., 1] == images[..., 2]).all(axis=(1, 2))
  assert images.shape == (400, 64, 64, 3)  # the grey JPEG comes out with 3 equal channels
  assert batches[0]['label'][grey].tolist() == [5]


def test_flips_only_in_training(prepared):
  _, flipped = _batches(_config(prepared[0], random_flip=True), count=4)
  _, plain = _batches(_config(prepared[0], random_flip=False), count=4)
  _, evaluated = _batches(_config(prepared[0]), train=False, global_batch_size=80)
  flips = np.concatenate([_audit(batch['image'])[2] for batch in flipped])
  assert 0 < flips.sum() < len(flips)
  assert not any(_audit(batch['image'])[2].any() for batch in plain + evaluated)
  for with_flip, without in zip(flipped, plain):
    np.testing.assert_array_equal(with_flip['label'], without['label'])


def test_reference_subset_and_hosts(prepared):
  # The reference keeps 250 of 500 images per class; here 1 of 2, split over two hosts.
  with pytest.raises(ValueError, match='fewer than data.examples_per_class=250'):
    tfds_pipeline.build(_config(prepared[0], examples_per_class=None), global_batch_size=8, seed=0)
  seen = []
  for process_index in range(2):
    info, batches = _batches(_config(prepared[0], examples_per_class=1), train=False, process_index=process_index,
                             process_count=2)
    assert info.num_examples == 200
    seen.append(np.concatenate([batch['label'] for batch in batches]))
  assert sorted(np.concatenate(seen)) == list(range(200))  # one image of every class, read by one host only
  assert len(seen[0]) == len(seen[1]) == 100


def test_resume_matches_uninterrupted(prepared):
  _, uninterrupted = _batches(_config(prepared[0]), count=53, seed=1)  # 400 examples: step 50 is in epoch 1
  _, resumed = _batches(_config(prepared[0]), count=3, seed=1, start_step=50)
  for expected, actual in zip(uninterrupted[50:], resumed):
    np.testing.assert_array_equal(expected['image'], actual['image'])


def test_unprepared_names_manual_dir(tmp_path):
  with pytest.raises(FileNotFoundError, match=r'tiny_imagenet is not prepared .* put tiny-imagenet-200.zip in a '
                     r'folder and add --manual_dir=FOLDER'):
    tfds_pipeline.build(_config(tmp_path), global_batch_size=8, seed=0)


def test_archive_without_200_classes(tmp_path):
  manual_dir = tmp_path / 'manual'
  manual_dir.mkdir()
  with zipfile.ZipFile(manual_dir / 'tiny-imagenet-200.zip', 'w') as archive:
    archive.writestr('tiny-imagenet-200/wnids.txt', 'n001\nn002\n')
  with pytest.raises(ValueError, match='lists 2 classes, not 200'):
    prepare_data.prepare('tiny_imagenet', str(tmp_path / 'tfds'), str(manual_dir))


def test_plain_mock_data_works():
  config = _config(None, examples_per_class=0)
  with tfds.testing.mock_data(num_examples=4):
    info, batches = _batches(config, count=1, global_batch_size=4)
  assert info.num_classes == 200 and batches[0]['image'].shape == (4, 64, 64, 3)
  assert tiny_imagenet.TinyImagenet.name == 'tiny_imagenet'


def test_prepare_data_rejects_unknown_dataset(capsys):
  with pytest.raises(SystemExit) as exit_info:
    prepare_data.main(['--dataset=mnist'])
  assert exit_info.value.code == 2
  assert "unknown dataset data.name='mnist'" in capsys.readouterr().err

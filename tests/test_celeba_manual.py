"""CelebA without Google Drive: tfds' celeb_a prepared from hand-downloaded files, and the image folder labelled by
list_attr_celeba.txt, both on a twelve-face fake laid out like the CelebA Google Drive folder."""

import io
import pathlib
import sys
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs import default
from pdm_jax import data
from pdm_jax.data import celeba_manual
from pdm_jax.data import datasets

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'scripts'))
import prepare_data  # pylint: disable=g-import-not-at-top,wrong-import-position

# The 40 attribute names of list_attr_celeba.txt, in its order.
ATTRIBUTES = ('5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair '
              'Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup '
              'High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose '
              'Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat '
              'Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young').split()
LANDMARKS = 'lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y'
NUM_IMAGES = 12
NAMES = [f'{index + 1:06d}.jpg' for index in range(NUM_IMAGES)]
PARTITION = [0] * 8 + [1] * 2 + [2] * 2  # train, validation, test as in list_eval_partition.txt
MALE = [index in (1, 2, 5, 7, 8, 11) for index in range(NUM_IMAGES)]  # 3 men and 5 women in train
SMILING = [index % 2 == 0 for index in range(NUM_IMAGES)]


def _face(index: int) -> bytes:
  """A 178x218 JPEG (CelebA's aligned size) of one colour that codes index, readable after any resize."""
  pixels = np.full((218, 178, 3), 20 * index + 10, np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format='JPEG', quality=95)
  return buffer.getvalue()


def _ids(images) -> np.ndarray:
  """images (B, H, W, 3) in [-1, 1] -> the face indices they code (B,)."""
  return np.rint(((images[:, 0, 0, 0] + 1.0) * 127.5 - 10) / 20).astype(np.int64)


def _expected_labels(ids, holds=MALE) -> np.ndarray:
  return np.array([0 if holds[i] else 1 for i in ids])


def _attribute_lines(names=NAMES) -> str:
  """list_attr_celeba.txt: the count, the header, then +1 / -1 per attribute, space-padded like the real file."""
  rows = []
  for name in names:
    index = NAMES.index(name)
    values = [1 if (attribute == 'Male' and MALE[index]) or (attribute == 'Smiling' and SMILING[index]) else -1
              for attribute in ATTRIBUTES]
    rows.append(name + ''.join(f' {value:2d}' for value in values) + '\n')
  return f'{len(names)}\n' + ' '.join(ATTRIBUTES) + ' \n' + ''.join(rows)


@pytest.fixture(scope='module')
def celeba(tmp_path_factory):
  """A fake CelebA Google Drive folder: Img/img_align_celeba.zip, Anno/*.txt, Eval/list_eval_partition.txt."""
  root = tmp_path_factory.mktemp('celeba') / 'CelebA'
  for sub in ('Img', 'Anno', 'Eval'):
    (root / sub).mkdir(parents=True)
  with zipfile.ZipFile(root / 'Img' / 'img_align_celeba.zip', 'w') as archive:
    for index, name in enumerate(NAMES):
      archive.writestr(f'img_align_celeba/{name}', _face(index))
  (root / 'Anno' / 'list_attr_celeba.txt').write_text(_attribute_lines())
  (root / 'Anno' / 'list_landmarks_align_celeba.txt').write_text(
      f'{NUM_IMAGES}\n{LANDMARKS}\n' + ''.join(f'{name}  69  109  106  113   77  142   73  152  108  154\n'
                                               for name in NAMES))
  (root / 'Anno' / 'identity_CelebA.txt').write_text(''.join(f'{name} {index % 5 + 1}\n'
                                                              for index, name in enumerate(NAMES)))
  (root / 'Eval' / 'list_eval_partition.txt').write_text(''.join(f'{name} {part}\n'
                                                                  for name, part in zip(NAMES, PARTITION)))
  return root


@pytest.fixture(scope='module')
def prepared(celeba, tmp_path_factory):
  """The tfds root after `prepare_data.py --dataset=celeb_a --manual_dir=<the fake Drive folder>`."""
  data_dir = tmp_path_factory.mktemp('tfds')
  prepare_data.main(['--dataset=celeb_a', f'--data_dir={data_dir}', f'--manual_dir={celeba}'])
  return data_dir


def _tfds_config(data_dir, **overrides):
  config = default.get_config().data
  config.update(dict(dict(name='celeb_a', data_dir=str(data_dir), image_size=16, num_channels=3, random_flip=False,
                     use_labels=True, examples_per_class=2), **overrides))
  return config


def _all(config, **kwargs):
  """(info, ids, labels) of one ordered pass."""
  info, iterator = data.build(config, global_batch_size=4, seed=0, train=False, **kwargs)
  batches = list(iterator)
  return (info, np.concatenate([_ids(batch['image']) for batch in batches]),
          np.concatenate([batch['label'] for batch in batches]))


def test_file_names_match_the_spec():
  assert tuple(celeba_manual.FILES.values()) == datasets.get_spec('celeb_a').manual_files


def test_prepared_where_the_catalogue_builder_reads(prepared):
  builder = tfds.builder('celeb_a', data_dir=str(prepared), try_gcs=False)  # the stock builder, as training opens
  assert builder.is_prepared() and type(builder) is not celeba_manual.CelebAManual
  assert {split: info.num_examples for split, info in builder.info.splits.items()} == {
      'train': 8, 'validation': 2, 'test': 2}
  test = {int(_ids(example['image'][None] / 127.5 - 1.0)[0]): example
          for example in tfds.as_numpy(builder.as_dataset(split='test'))}
  assert sorted(test) == [10, 11]
  for index, example in test.items():
    assert example['image'].shape == (218, 178, 3)
    assert bool(example['attributes']['Male']) == MALE[index]
    assert bool(example['attributes']['Smiling']) == SMILING[index]
    assert example['identity']['Identity_No'] == index % 5 + 1 and example['landmarks']['nose_y'] == 142


def test_pipeline_reads_the_train_partition_with_labels(prepared):
  data.check_available(_tfds_config(prepared))
  info, ids, labels = _all(_tfds_config(prepared))
  assert info == data.DatasetInfo('celeb_a', 16, 3, num_classes=2, num_examples=4)
  assert set(ids) <= set(range(8))  # the balanced subset comes from the train partition only
  np.testing.assert_array_equal(labels, _expected_labels(ids))  # Male -> 0
  assert sorted(labels) == [0, 0, 1, 1]
  _, ids, labels = _all(_tfds_config(prepared, split='validation', examples_per_class=0, attribute='Smiling'))
  assert sorted(ids) == [8, 9]
  np.testing.assert_array_equal(labels, _expected_labels(ids, SMILING))


def test_missing_files_are_named(celeba, tmp_path, capsys):
  manual_dir = tmp_path / 'downloads'
  manual_dir.mkdir()
  (manual_dir / 'img_align_celeba.zip').write_bytes((celeba / 'Img' / 'img_align_celeba.zip').read_bytes())
  (manual_dir / 'list_eval_partition.txt').write_text((celeba / 'Eval' / 'list_eval_partition.txt').read_text())
  with pytest.raises(SystemExit) as exit_info:
    prepare_data.main(['--dataset=celeb_a', f'--data_dir={tmp_path / "tfds"}', f'--manual_dir={manual_dir}'])
  assert exit_info.value.code == 2
  error = capsys.readouterr().err.strip()
  assert error.startswith(f'prepare_data.py: --manual_dir={manual_dir} lacks list_attr_celeba.txt, '
                          'list_landmarks_align_celeba.txt, identity_CelebA.txt: download them from '
                          'https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html')
  assert '\n' not in error
  with pytest.raises(SystemExit):
    prepare_data.main(['--dataset=celeb_a', f'--data_dir={tmp_path / "tfds"}', f'--manual_dir={tmp_path / "no"}'])
  assert f'--manual_dir={tmp_path / "no"} is not a folder' in capsys.readouterr().err
  assert not tfds.builder('celeb_a', data_dir=str(tmp_path / 'tfds'), try_gcs=False).is_prepared()


def test_unprepared_message_names_the_manual_route(tmp_path):
  with pytest.raises(FileNotFoundError, match=r'celeb_a is not prepared .* put img_align_celeba.zip, '
                     r'list_eval_partition.txt, list_attr_celeba.txt, list_landmarks_align_celeba.txt, '
                     r'identity_CelebA.txt in a folder and add --manual_dir=FOLDER; download them by hand from '
                     r'https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html'):
    data.check_available(_tfds_config(tmp_path))


@pytest.fixture(scope='module')
def image_folder(celeba, tmp_path_factory):
  """img_align_celeba/ unzipped from the fake archive: (images folder, attribute file)."""
  root = tmp_path_factory.mktemp('unzipped')
  with zipfile.ZipFile(celeba / 'Img' / 'img_align_celeba.zip') as archive:
    archive.extractall(root)
  return root / 'img_align_celeba', celeba / 'Anno' / 'list_attr_celeba.txt'


def _folder_config(folder, attributes_file, **overrides):
  config = default.get_config().data
  config.update(dict(dict(name='image_folder', data_dir=str(folder), attributes_file=str(attributes_file),
                          attribute='Male', image_size=16, num_channels=3, resize_mode='squash', random_flip=False,
                          use_labels=True, examples_per_class=0), **overrides))
  return config


def test_image_folder_labelled_by_attribute(image_folder):
  config = _folder_config(*image_folder)
  data.check_available(config)
  assert data.describe(config).num_classes == 2
  info, ids, labels = _all(config)
  assert info.num_classes == 2 and info.num_examples == NUM_IMAGES
  assert sorted(ids) == list(range(NUM_IMAGES))  # every face of the folder, whatever its partition
  np.testing.assert_array_equal(labels, _expected_labels(ids))
  _, ids, labels = _all(_folder_config(*image_folder, attribute='Smiling'))
  np.testing.assert_array_equal(labels, _expected_labels(ids, SMILING))
  info, ids, labels = _all(_folder_config(*image_folder, examples_per_class=3, subset_seed=1))
  assert info.num_examples == 6 and sorted(labels) == [0, 0, 0, 1, 1, 1]
  np.testing.assert_array_equal(labels, _expected_labels(ids))


def test_image_folder_reads_kaggle_csv(image_folder, tmp_path):
  folder, attributes_file = image_folder
  lines = attributes_file.read_text().splitlines()[1:]  # Kaggle's copy: no count, an image_id column, commas
  csv = tmp_path / 'list_attr_celeba.csv'
  csv.write_text(','.join(['image_id'] + lines[0].split()) + '\n'
                 + ''.join(','.join(line.split()) + '\n' for line in lines[1:]))
  _, ids, labels = _all(_folder_config(folder, csv))
  np.testing.assert_array_equal(labels, _expected_labels(ids))


def test_image_folder_attribute_errors(image_folder, tmp_path):
  folder, attributes_file = image_folder
  for attribute in ('Beard', None):
    with pytest.raises(ValueError, match=rf"data.attribute={attribute!r} is not in .*: use one of 5_o_Clock_Shadow, "
                       r'Arched_Eyebrows, .*, Young\.$'):
      data.check_available(_folder_config(folder, attributes_file, attribute=attribute))
  short = tmp_path / 'short.txt'
  short.write_text(_attribute_lines(NAMES[:9]))
  with pytest.raises(ValueError, match=r'3 of 12 images are not in data.attributes_file=.*short.txt \(e.g. '
                     r'000010.jpg, 000011.jpg, 000012.jpg\)'):
    data.build(_folder_config(folder, short), global_batch_size=4, seed=0)
  with pytest.raises(FileNotFoundError, match='data.attributes_file=.*missing.txt does not exist'):
    data.check_available(_folder_config(folder, tmp_path / 'missing.txt'))


def test_attributes_file_keys_the_cached_real_statistics(image_folder, tmp_path):
  from pdm_jax.inference import evaluate  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.data = _folder_config(*image_folder, examples_per_class=3)
  keyed = evaluate.reference_key(config)
  config.data.attributes_file = str(tmp_path / 'other.txt')  # other labels: another balanced subset
  assert evaluate.reference_key(config) != keyed

"""A tfds builder for Tiny ImageNet 200 (not in the tfds catalogue), read from the official tiny-imagenet-200.zip.

Importing this module registers the dataset as 'tiny_imagenet'. The archive is taken from manual_dir when it is
there (no internet needed), else downloaded. Labels index the sorted WordNet ids of wnids.txt.
"""

import os
import zipfile

from etils import epath
import tensorflow_datasets as tfds

from pdm_jax.data import image_ops  # pylint: disable=unused-import  (keeps TensorFlow off the GPUs)

ARCHIVE = 'tiny-imagenet-200.zip'
URL = 'http://cs231n.stanford.edu/tiny-imagenet-200.zip'
NUM_CLASSES = 200


class TinyImagenet(tfds.core.GeneratorBasedBuilder):
  """Tiny ImageNet: 64x64 images of 200 classes; 100,000 for training and 10,000 labelled for validation."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Train and validation splits of tiny-imagenet-200.zip.'}
  # tfds finds a builder's source (for checksums) through importlib_resources, which recent etils no longer
  # installs; naming the file directly lets this builder prepare without it.
  code_path = epath.Path(__file__)
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'Optional: put {ARCHIVE} (from {URL}) in manual_dir to prepare without internet; otherwise it is downloaded.')

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description='Tiny ImageNet 200 (Stanford CS231n): 200 ImageNet classes downsampled to 64x64.',
        features=tfds.features.FeaturesDict({
            # Kept as the archive's JPEG bytes; the few grey images decode to 3 channels like the rest.
            'image': tfds.features.Image(shape=(64, 64, 3), encoding_format='jpeg'),
            'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            'id': tfds.features.Text(),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://www.kaggle.com/c/tiny-imagenet',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    archive = _manual_archive(dl_manager) or dl_manager.download(URL)
    with zipfile.ZipFile(epath.Path(archive).open('rb')) as opened:
      root, wnids = _read_wnids(opened, archive)
    self.info.features['label'].names = wnids
    return {
        'train': self._generate_examples(archive, root, 'train'),
        'validation': self._generate_examples(archive, root, 'validation'),
    }

  def _generate_examples(self, archive, root: str, split: str):
    """Yields (archive member, example) for every image of split."""
    with zipfile.ZipFile(epath.Path(archive).open('rb')) as opened:
      if split == 'train':
        # Members look like tiny-imagenet-200/train/n01443537/images/n01443537_0.JPEG.
        members = ((name, name.split('/')[-3]) for name in opened.namelist()
                   if name.startswith(f'{root}train/') and name.split('/')[-2] == 'images' and _is_jpeg(name))
      else:
        annotations = opened.read(f'{root}val/val_annotations.txt').decode().splitlines()
        # Lines look like: val_0.JPEG <tab> n03444034 <tab> box coordinates.
        members = ((f'{root}val/images/{fields[0]}', fields[1])
                   for fields in (line.split('\t') for line in annotations if line.strip()))
      for name, wnid in members:
        yield name, {'image': opened.read(name), 'label': wnid, 'id': os.path.splitext(os.path.basename(name))[0]}


def _is_jpeg(name: str) -> bool:
  return name.lower().endswith(('.jpeg', '.jpg'))


def _manual_archive(dl_manager: tfds.download.DownloadManager):
  """The archive in manual_dir, or None when manual_dir is unset, empty or lacks it."""
  try:
    candidate = dl_manager.manual_dir / ARCHIVE
  except AssertionError:  # tfds' way of saying manual_dir is missing or empty
    return None
  return candidate if candidate.exists() else None


def _read_wnids(opened: zipfile.ZipFile, archive) -> tuple[str, list[str]]:
  """(member prefix such as 'tiny-imagenet-200/', sorted WordNet ids) of the official archive."""
  listing = [name for name in opened.namelist() if name.rsplit('/', 1)[-1] == 'wnids.txt']
  if not listing:
    raise ValueError(f'{archive} has no wnids.txt: use the official {ARCHIVE} from {URL}.')
  root = listing[0][:-len('wnids.txt')]
  wnids = sorted({line.strip() for line in opened.read(listing[0]).decode().splitlines() if line.strip()})
  if len(wnids) != NUM_CLASSES:
    raise ValueError(f'{archive} lists {len(wnids)} classes, not {NUM_CLASSES}: use the official {ARCHIVE} from {URL}.')
  return root, wnids

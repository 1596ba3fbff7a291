"""The five tfds datasets of the paper: catalogue names, sizes, labels, and the reference's preprocessing."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """How to read one tfds dataset; every field is a default that a data config may override."""
  name: str  # the tfds catalogue name, e.g. 'eurosat/rgb'
  image_size: int  # resolution the reference trains at
  num_classes: int
  label_feature: str  # the feature holding the class ('attributes' for celeb_a, where an attribute decides it)
  splits: tuple[str, ...]  # named tfds splits
  unlabelled_splits: tuple[str, ...] = ()  # splits whose label is a placeholder (stl10: -1)
  reference_split: str = 'train'  # the split (or sum of splits) the reference trains on
  examples_per_class: int | None = None  # the reference's balanced subset; None: the whole split
  attribute: str | None = None  # celeb_a: label 0 where this binary attribute holds, 1 elsewhere
  resize_mode: str = 'squash'  # how images whose size differs from image_size are brought to it
  builder_module: str | None = None  # module that registers a builder missing from the tfds catalogue
  manual_files: tuple[str, ...] = ()  # files that may be put in manual_dir instead of downloading
  manual_source: str | None = None  # where to download manual_files by hand
  manual_builder: str | None = None  # 'module.Class' preparing from manual_dir where the catalogue's builder cannot


SPECS = {
    spec.name: spec for spec in (
        DatasetSpec(name='cifar10', image_size=32, num_classes=10, label_feature='label', splits=('train', 'test')),
        # The reference squashes the 178x218 faces to 176x176 (Resize((176, 176))) and trains on 10,000 men
        # (label 0) and 10,000 women (label 1) drawn from the train split.
        DatasetSpec(name='celeb_a', image_size=176, num_classes=2, label_feature='attributes',
                    splits=('train', 'validation', 'test'), examples_per_class=10_000, attribute='Male',
                    # tfds downloads these from Google Drive, which often refuses; by hand they come from the page.
                    manual_files=('img_align_celeba.zip', 'list_eval_partition.txt', 'list_attr_celeba.txt',
                                  'list_landmarks_align_celeba.txt', 'identity_CelebA.txt'),
                    manual_source='https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html',
                    manual_builder='pdm_jax.data.celeba_manual.CelebAManual'),
        DatasetSpec(name='eurosat/rgb', image_size=64, num_classes=10, label_feature='label', splits=('train',)),
        # The reference trains on the 13,000 labelled images (train + test); 'unlabelled' holds 100,000 more.
        DatasetSpec(name='stl10', image_size=96, num_classes=10, label_feature='label',
                    splits=('train', 'test', 'unlabelled'), unlabelled_splits=('unlabelled',),
                    reference_split='train+test'),
        # The reference trains on 250 of the 500 training images of each of the 200 classes.
        DatasetSpec(name='tiny_imagenet', image_size=64, num_classes=200, label_feature='label',
                    splits=('train', 'validation'), examples_per_class=250,
                    builder_module='pdm_jax.data.tiny_imagenet', manual_files=('tiny-imagenet-200.zip',),
                    manual_source='http://cs231n.stanford.edu/tiny-imagenet-200.zip'),
    )
}

# Spellings used by config file names and papers.
ALIASES = {'celeba': 'celeb_a', 'eurosat': 'eurosat/rgb', 'eurosat_rgb': 'eurosat/rgb', 'cifar-10': 'cifar10',
           'stl-10': 'stl10', 'tiny-imagenet': 'tiny_imagenet', 'tiny_imagenet_200': 'tiny_imagenet'}


def get_spec(name: str) -> DatasetSpec:
  """The spec of a dataset by tfds name or alias; ValueError listing the valid names otherwise."""
  spec = SPECS.get(ALIASES.get(name, name))
  if spec is None:
    raise ValueError(f'unknown dataset data.name={name!r}: use one of {", ".join(SPECS)}, '
                     "'image_folder' (with data.data_dir) or 'digits'.")
  return spec


def split_has_labels(spec: DatasetSpec, split: str) -> bool:
  """Whether every part of a split expression such as 'train+test[:50%]' carries real labels."""
  parts = [part.split('[')[0].strip() for part in split.split('+')]
  return not any(part in spec.unlabelled_splits for part in parts)

"""Downloads and prepares a tfds dataset ahead of training, for clusters whose compute nodes have no internet.

Run on a machine with internet, then copy --data_dir to the cluster and set data.data_dir (or TFDS_DATA_DIR) there:
  python scripts/prepare_data.py --dataset=cifar10 --data_dir=/data/tfds
  python scripts/prepare_data.py --dataset=tiny_imagenet --data_dir=/data/tfds --manual_dir=/downloads
With --manual_dir holding tiny-imagenet-200.zip, Tiny ImageNet is prepared without internet. CelebA downloads from
Google Drive, which often refuses; download its files by hand from the CelebA page instead and prepare from them:
  python scripts/prepare_data.py --dataset=celeb_a --data_dir=/data/tfds --manual_dir=/downloads/CelebA
(img_align_celeba.zip, list_eval_partition.txt, list_attr_celeba.txt, list_landmarks_align_celeba.txt and
identity_CelebA.txt, in that folder or in the Img, Anno and Eval sub-folders of the page's Google Drive copy).
"""

import argparse
import importlib.util
import pathlib
import sys
from typing import Optional, Sequence

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from anywhere without installing

import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

from pdm_jax.data import datasets  # pylint: disable=g-import-not-at-top
from pdm_jax.data import tfds_pipeline  # pylint: disable=g-import-not-at-top


def prepare(name: str, data_dir: Optional[str] = None, manual_dir: Optional[str] = None) -> str:
  """Prepares dataset `name` under data_dir (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets); returns its path."""
  spec = datasets.get_spec(name)
  if manual_dir is not None and not pathlib.Path(manual_dir).expanduser().is_dir():
    raise ValueError(f'--manual_dir={manual_dir} is not a folder: point it at the folder holding '
                     f'{", ".join(spec.manual_files) or "the downloaded files"}.')
  manual = bool(manual_dir and spec.manual_builder)  # a builder reading manual_dir in place of the download
  if not (spec.builder_module or manual) and importlib.util.find_spec('importlib_resources') is None:
    # tfds 4.9 looks up its builders' checksums through it, and recent etils no longer pulls it in.
    raise ValueError('tfds needs the importlib_resources package to prepare datasets: pip install '
                     'importlib_resources, then run this again.')
  data_dir = tfds_pipeline.resolve_data_dir(data_dir)
  builder = tfds_pipeline.open_builder(spec, data_dir, manual=manual)
  if not builder.is_prepared():
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=None if manual_dir is None else str(pathlib.Path(manual_dir).expanduser())))
  return str(builder.data_dir)


def main(argv: Optional[Sequence[str]] = None) -> None:
  """Parses the flags and prepares one dataset; exits with status 2 and a one-line reason on bad input."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--dataset', required=True, help=f'one of {", ".join(datasets.SPECS)}')
  parser.add_argument('--data_dir', default=None, help='tfds root to write (default: $TFDS_DATA_DIR or '
                      '~/tensorflow_datasets)')
  parser.add_argument('--manual_dir', default=None, help='folder holding the files downloaded by hand '
                      '(tiny_imagenet, celeb_a)')
  args = parser.parse_args(argv)
  try:
    path = prepare(args.dataset, args.data_dir, args.manual_dir)
  except ValueError as error:
    parser.exit(2, f'prepare_data.py: {error}\n')
  print(f'{args.dataset} is ready in {path}')


if __name__ == '__main__':
  main()

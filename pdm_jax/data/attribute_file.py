"""Binary class labels of images from a CelebA attribute list such as list_attr_celeba.txt.

The format is CelebA's: an optional line with the image count, a header of attribute names, then one line per
image, its file name and +1 / -1 for each attribute (Kaggle's comma-separated copy with an image_id column also
reads). As on the tfds route, an image is class 0 where the attribute holds (+1) and class 1 elsewhere, so for
'Male' men are 0 and women 1, as in the reference.
"""

import os
import re

import numpy as np

_SEPARATORS = re.compile(r'[,\s]+')


def _fields(line: str) -> list[str]:
  return [field for field in _SEPARATORS.split(line.strip()) if field]


def read_column(attributes_file: str, attribute: str | None) -> dict[str, bool]:
  """{image file name: whether attribute holds} from attributes_file; ValueError listing the valid names if
  attribute is None or not in the header."""
  path = os.path.expanduser(attributes_file)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'data.attributes_file={attributes_file} does not exist: point it at list_attr_celeba.txt.')
  with open(path) as opened:
    lines = [fields for fields in (_fields(line) for line in opened) if fields]
  if lines and len(lines[0]) == 1 and lines[0][0].isdigit():
    lines = lines[1:]  # the image count
  if len(lines) < 2:
    raise ValueError(f'data.attributes_file={attributes_file} holds no images: expected a header of attribute '
                     'names, then a file name and +1 / -1 values per line.')
  header, rows = lines[0], lines[1:]
  names = header[1:] if len(header) == len(rows[0]) else header  # a header may name the file column too
  if attribute not in names:
    raise ValueError(f'data.attribute={attribute!r} is not in {attributes_file}: use one of {", ".join(names)}.')
  column = 1 + names.index(attribute)
  holds = {}
  for row in rows:
    if len(row) != 1 + len(names) or row[column] not in ('1', '-1'):
      raise ValueError(f'{attributes_file}: the line of {row[0]} is not a file name and {len(names)} values of '
                       '+1 / -1.')
    holds[row[0]] = row[column] == '1'
  return holds


def labels_for(paths: list[str], attributes_file: str, attribute: str | None) -> np.ndarray:
  """int64 labels (N,) of the image paths, matched by file name: 0 where attribute holds, 1 elsewhere; ValueError
  naming a few images the file does not list."""
  holds = read_column(attributes_file, attribute)
  names = [os.path.basename(path) for path in paths]
  unlisted = [name for name in names if name not in holds]
  if unlisted:
    raise ValueError(f'{len(unlisted)} of {len(names)} images are not in data.attributes_file={attributes_file} '
                     f'(e.g. {", ".join(unlisted[:3])}): remove them from data.data_dir or use the matching file.')
  return np.array([0 if holds[name] else 1 for name in names], np.int64)

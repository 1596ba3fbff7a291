"""pytorch-fid's Inception weights: find or download the `.pth` file, read it without torch (torch_weights.py),
map it onto flax."""

import hashlib
import os
import pathlib
import shutil
import tempfile
import urllib.error
import urllib.request

import jax
import numpy as np

from pdm_jax import torch_weights
from pdm_jax.evaluation import inception

FID_WEIGHTS_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
                   'pt_inception-2015-12-05-6726825d.pth')
FID_WEIGHTS_FILENAME = 'pt_inception-2015-12-05-6726825d.pth'
FID_WEIGHTS_SHA256_PREFIX = '6726825d'  # torch hub convention: the file name carries its hash prefix
CACHE_DIR_ENV = 'PDM_JAX_CACHE_DIR'
DOWNLOAD_TIMEOUT_S = 10.0

def cache_dir() -> pathlib.Path:
  """Directory for downloaded weights and reference statistics: $PDM_JAX_CACHE_DIR or ~/.cache/pdm_jax."""
  return pathlib.Path(os.environ.get(CACHE_DIR_ENV, pathlib.Path.home() / '.cache' / 'pdm_jax')).expanduser()


def default_weights_path() -> pathlib.Path:
  """Where the FID Inception weights are looked for and downloaded to: <cache_dir>/inception/<release name>."""
  return cache_dir() / 'inception' / FID_WEIGHTS_FILENAME


def file_sha256(path: str | os.PathLike) -> str:
  """Hex SHA-256 of a file, read in 1 MiB chunks."""
  digest = hashlib.sha256()
  with open(path, 'rb') as file:
    for chunk in iter(lambda: file.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def download_weights(path: str | os.PathLike | None = None, url: str = FID_WEIGHTS_URL,
                     timeout: float = DOWNLOAD_TIMEOUT_S) -> pathlib.Path:
  """Downloads pytorch-fid's weights to path (default: default_weights_path()); offline it fails within timeout."""
  path = pathlib.Path(path) if path is not None else default_weights_path()
  path.parent.mkdir(parents=True, exist_ok=True)
  partial = None
  try:
    with urllib.request.urlopen(url, timeout=timeout) as response:
      # Write beside the target and rename, so an interrupted download never looks like a weights file.
      with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix='.partial') as partial:
        shutil.copyfileobj(response, partial)
  except (urllib.error.URLError, OSError, ValueError) as error:
    if partial is not None and os.path.exists(partial.name):
      os.unlink(partial.name)
    raise FileNotFoundError(f'FID Inception weights are not at {path} and downloading {url} failed ({error}): '
                            f'fetch that file where there is internet and copy it to {path} '
                            f'(or set ${CACHE_DIR_ENV}).') from None
  if url == FID_WEIGHTS_URL and not file_sha256(partial.name).startswith(FID_WEIGHTS_SHA256_PREFIX):
    os.unlink(partial.name)
    raise ValueError(f'downloaded {url} but its SHA-256 does not start with {FID_WEIGHTS_SHA256_PREFIX}: '
                     'the download was corrupted or intercepted; retry or copy the file by hand.')
  os.replace(partial.name, path)
  return path


def find_or_download_weights(path: str | os.PathLike | None = None, download: bool = True) -> pathlib.Path:
  """Path of the weights file: path if given (must exist), else the cached copy, downloading it if allowed."""
  if path is not None:
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
      raise FileNotFoundError(f'no Inception weights file at {path}: pass the path of {FID_WEIGHTS_FILENAME}.')
    return path
  cached = default_weights_path()
  if cached.is_file():
    return cached
  if not download:
    raise FileNotFoundError(f'FID Inception weights are not at {cached}: download {FID_WEIGHTS_URL} and copy it '
                            f'there (or set ${CACHE_DIR_ENV}).')
  return download_weights(cached)


def _torch_to_flax_key(name: str) -> tuple[str, tuple[str, ...]] | None:
  """'Mixed_5b.branch1x1.bn.running_mean' -> ('batch_stats', ('Mixed_5b', 'branch1x1', 'bn', 'mean'))."""
  *modules, leaf = name.split('.')
  if leaf == 'num_batches_tracked':
    return None  # a training counter, not used at inference
  if modules and modules[-1] == 'bn':
    collection, leaf = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
                        'running_mean': ('batch_stats', 'mean'),
                        'running_var': ('batch_stats', 'var')}.get(leaf, ('params', leaf))
    return collection, (*modules, leaf)
  return 'params', (*modules, {'weight': 'kernel'}.get(leaf, leaf))


def _to_flax_layout(array: np.ndarray) -> np.ndarray:
  """torch conv (O, I, kh, kw) -> flax (kh, kw, I, O); torch linear (O, I) -> flax (I, O)."""
  if array.ndim == 4:
    return array.transpose(2, 3, 1, 0)
  if array.ndim == 2:
    return array.T
  return array


def _torch_shape(flax_shape: tuple) -> tuple:
  """The torch layout of a flax kernel shape: (kh, kw, I, O) -> (O, I, kh, kw); (I, O) -> (O, I)."""
  if len(flax_shape) == 4:
    return tuple(flax_shape[axis] for axis in (3, 2, 0, 1))
  return tuple(reversed(flax_shape)) if len(flax_shape) == 2 else tuple(flax_shape)


def state_dict_to_variables(state_dict: dict[str, np.ndarray]) -> dict:
  """pytorch-fid's Inception state dict -> flax variables {'params', 'batch_stats'}, checking every key and shape."""
  expected = {(collection, path): leaf.shape for collection, tree in inception.variable_shapes().items()
              for path, leaf in _flatten(tree)}
  variables = {}
  for name, array in state_dict.items():
    target = _torch_to_flax_key(name)
    if target is None:
      continue
    converted = np.asarray(_to_flax_layout(array), np.float32)
    if target not in expected:
      raise ValueError(f'weights file is not the FID Inception network: unexpected key {name} '
                       f'(use pytorch-fid\'s {FID_WEIGHTS_FILENAME}).')
    if converted.shape != expected[target]:
      raise ValueError(f'weights file is not the FID Inception network: key {name} has shape {array.shape}, '
                       f'expected {_torch_shape(expected[target])} (use pytorch-fid\'s {FID_WEIGHTS_FILENAME}).')
    variables[target] = converted
  missing = sorted('.'.join(path) for (_, path) in set(expected) - set(variables))
  if missing:
    raise ValueError(f'weights file is not the FID Inception network: {len(missing)} tensors missing, e.g. '
                     f'{missing[0]} (use pytorch-fid\'s {FID_WEIGHTS_FILENAME}).')
  return _unflatten(variables)


def _flatten(tree: dict, prefix: tuple = ()) -> list:
  """[(path tuple, leaf)] of a nested dict."""
  items = []
  for key, value in tree.items():
    if isinstance(value, dict):
      items.extend(_flatten(value, (*prefix, key)))
    else:
      items.append(((*prefix, key), value))
  return items


def _unflatten(flat: dict) -> dict:
  """{(collection, path): array} -> nested {collection: {...}} of jax arrays."""
  tree = {}
  for (collection, path), value in flat.items():
    node = tree.setdefault(collection, {})
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = jax.numpy.asarray(value)
  return tree


def load_inception_variables(path: str | os.PathLike | None = None, download: bool = True) -> dict:
  """Flax variables of the FID Inception network from path, the cache, or (if download) the pytorch-fid release."""
  return state_dict_to_variables(torch_weights.read_state_dict(find_or_download_weights(path, download)))


def weights_fingerprint(path: str | os.PathLike) -> str:
  """Short content hash (12 hex) of a weights file, to key cached statistics to the exact network."""
  return file_sha256(path)[:12]

"""Reads torch.save'd state dicts without torch.

The file is a pickled state dict of tensors, either in torch's zip format (`<name>/data.pkl` plus one raw file per
storage) or its older single-stream format. A restricted unpickler rebuilds each tensor from its storage bytes as a
numpy array and refuses any other object, so loading runs no code from the file and needs no torch.
"""

import collections
import os
import pathlib
import pickle
import struct
import zipfile

import numpy as np

_STORAGE_DTYPES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'LongStorage': np.int64, 'IntStorage': np.int32, 'ShortStorage': np.int16, 'CharStorage': np.int8,
    'ByteStorage': np.uint8, 'BoolStorage': np.bool_,
}
_LEGACY_MAGIC_NUMBER = 0x1950a86a20f9469cfc6c


class _Storage:
  """A storage reference from the pickle: dtype, key, element count and, in legacy files, a view of another one."""

  def __init__(self, dtype: type, key: str, numel: int, view: tuple | None):
    self.dtype, self.key, self.numel, self.view = dtype, key, numel, view


class _StorageType:
  """Stands in for torch.FloatStorage etc. inside the pickle; only its dtype matters."""

  def __init__(self, dtype: type):
    self.dtype = dtype


class _TensorRecord:
  """A tensor as the pickle describes it (storage, element offset, size, stride); made an array once bytes are read."""

  def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple, *unused):
    del unused  # requires_grad, backward hooks, metadata: irrelevant for weights
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

  def to_numpy(self, flat: np.ndarray) -> np.ndarray:
    """The (size) array inside flat (the storage's elements), copied out."""
    size, stride = self.size, self.stride
    if len(size) != len(stride) or any(extent < 0 for extent in size) or any(step < 0 for step in stride):
      raise ValueError('weights file holds a malformed tensor: re-save it with torch.save(model.state_dict()).')
    if 0 not in size:
      last = self.offset + sum((extent - 1) * step for extent, step in zip(size, stride))
      if self.offset < 0 or last >= flat.size:
        raise ValueError('weights file holds a tensor outside its storage: the file is truncated or corrupt.')
    view = np.lib.stride_tricks.as_strided(flat[self.offset:], shape=size,
                                           strides=[step * flat.itemsize for step in stride])
    return np.array(view)  # a copy: the storage buffer is shared and read-only


def _rebuild_parameter(data, *unused):
  """nn.Parameter(data) -> data."""
  del unused
  return data


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickles a state dict of tensors into _TensorRecords and rejects every class a state dict does not need."""

  _ALLOWED = {
      ('collections', 'OrderedDict'): collections.OrderedDict,
      ('torch._utils', '_rebuild_tensor_v2'): _TensorRecord,
      ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
  }

  def find_class(self, module: str, name: str):
    if module == 'torch' and name in _STORAGE_DTYPES:
      return _StorageType(_STORAGE_DTYPES[name])
    if (module, name) in self._ALLOWED:
      return self._ALLOWED[(module, name)]
    raise ValueError(f'weights file contains {module}.{name}, not a plain state dict of tensors: '
                     'save it with torch.save(model.state_dict()).')

  def persistent_load(self, saved_id):
    if not (isinstance(saved_id, tuple) and len(saved_id) >= 5 and saved_id[0] == 'storage'):
      raise ValueError(f'weights file has an unknown persistent record {saved_id!r:.80}: re-save the state dict.')
    storage_type, key, _, numel = saved_id[1:5]
    if not isinstance(storage_type, _StorageType):
      raise ValueError(f'weights file has an unsupported storage type {storage_type!r:.80}: save float32 weights.')
    view = saved_id[5] if len(saved_id) > 5 else None
    return _Storage(storage_type.dtype, str(key), int(numel), view)


def _resolve(state, storage_elements) -> dict:
  """Replaces each _TensorRecord in a state dict by its array; storage_elements(storage) gives the flat elements."""
  if not isinstance(state, dict):
    raise ValueError('weights file does not hold a state dict: save model.state_dict(), not the model.')
  return {name: value.to_numpy(storage_elements(value.storage)) if isinstance(value, _TensorRecord) else value
          for name, value in state.items()}


def _read_zip_state_dict(archive: zipfile.ZipFile) -> dict:
  """Reads torch's zip format: <root>/data.pkl referencing raw storages <root>/data/<key>."""
  pickles = [name for name in archive.namelist() if name.endswith('/data.pkl') and name.count('/') == 1]
  if len(pickles) != 1:
    raise ValueError('weights file is a zip but not a torch checkpoint (no single <root>/data.pkl).')
  root = pickles[0][:-len('data.pkl')]
  byteorder = 'little'
  if root + 'byteorder' in archive.namelist():
    byteorder = archive.read(root + 'byteorder').decode().strip()
  with archive.open(pickles[0]) as file:
    state = _RestrictedUnpickler(file).load()

  def storage_elements(storage: _Storage) -> np.ndarray:
    dtype = np.dtype(storage.dtype).newbyteorder('<' if byteorder == 'little' else '>')
    data = np.frombuffer(archive.read(f'{root}data/{storage.key}'), dtype=dtype)
    if data.size < storage.numel:
      raise ValueError(f'storage {storage.key} in the weights file is truncated: download the file again.')
    return data[:storage.numel].astype(dtype.newbyteorder('='))

  return _resolve(state, storage_elements)


def _read_legacy_state_dict(file) -> dict:
  """Reads torch's pre-1.6 stream: magic, version, sys info, the object pickle, storage keys, then raw storages."""
  if _RestrictedUnpickler(file).load() != _LEGACY_MAGIC_NUMBER:
    raise ValueError('weights file is neither a torch zip nor a legacy torch file: download it again.')
  _RestrictedUnpickler(file).load()  # protocol version
  if not _RestrictedUnpickler(file).load().get('little_endian', True):
    raise ValueError('weights file was written on a big-endian machine: re-save it on a little-endian one.')
  unpickler = _RestrictedUnpickler(file)
  state = unpickler.load()
  records = [value for value in (state.values() if isinstance(state, dict) else ())
             if isinstance(value, _TensorRecord)]
  dtypes = {record.storage.key: record.storage.dtype for record in records}
  elements = {}
  for key in _RestrictedUnpickler(file).load():
    # Each storage: its element count as a little-endian int64, then its raw bytes.
    (numel,) = struct.unpack('<q', file.read(8))
    dtype = np.dtype(dtypes.get(str(key), np.uint8))
    buffer = file.read(numel * dtype.itemsize)
    if len(buffer) != numel * dtype.itemsize:
      raise ValueError('weights file is truncated: download it again.')
    elements[str(key)] = np.frombuffer(buffer, dtype=dtype)

  def storage_elements(storage: _Storage) -> np.ndarray:
    if storage.view is None:
      return elements[storage.key]
    _, offset, view_numel = storage.view  # a slice of the root storage storage.key, in elements
    return elements[storage.key][offset:offset + view_numel]

  return _resolve(state, storage_elements)


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a torch.save'd state dict {name: tensor} as {name: numpy array}, without importing torch."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'no weights file at {path}: pass the path of an existing .pth / .bin file.')
  try:
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as archive:
        state = _read_zip_state_dict(archive)
    else:
      with open(path, 'rb') as file:
        state = _read_legacy_state_dict(file)
  except (pickle.UnpicklingError, EOFError, KeyError, struct.error, AttributeError, TypeError,
          zipfile.BadZipFile) as error:
    raise ValueError(f'cannot read {path} as a torch state dict ({type(error).__name__}: {error}): '
                     'download the weights file again.') from None
  if not isinstance(state, dict) or not all(isinstance(value, np.ndarray) for value in state.values()):
    raise ValueError(f'{path} does not hold a state dict of tensors: save model.state_dict(), not the model.')
  return dict(state)

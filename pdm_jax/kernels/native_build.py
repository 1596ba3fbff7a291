"""Compiles a C++ XLA FFI kernel of this package on first use and caches the shared library.

The source ships with the package, so `pip install` needs no compiler; the first process that needs a kernel builds
it with the machine's C++ compiler (`CXX`, default g++) for this CPU (-march=native) and later ones load it. The
cache key is the source and the kernels' shared headers, the flags, jaxlib's version and the CPU's model and feature
flags, so a shared home directory on a cluster of different machines keeps one library per kind of CPU. The
directory is `$PDM_JAX_KERNEL_CACHE`, else `$XDG_CACHE_HOME/pdm_jax/kernels`, else `~/.cache/pdm_jax/kernels`.
"""

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile

import jax
import jaxlib

_FLAGS = ('-O3', '-march=native', '-std=c++17', '-shared', '-fPIC', '-w')


class NativeBuildError(RuntimeError):
  """A kernel could not be compiled or loaded here; the message says why in one line."""


def cache_dir() -> pathlib.Path:
  """Where built kernels are kept."""
  if os.environ.get('PDM_JAX_KERNEL_CACHE'):
    return pathlib.Path(os.environ['PDM_JAX_KERNEL_CACHE'])
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return pathlib.Path(base) / 'pdm_jax' / 'kernels'


def _cpu_signature() -> str:
  """The CPU's model name and feature flags (what -march=native compiles for), or the machine type."""
  try:
    with open('/proc/cpuinfo') as f:
      lines = [line for line in f if line.startswith(('model name', 'flags', 'Features', 'CPU part'))]
    return ''.join(sorted(set(lines)))
  except OSError:
    return platform.machine() + platform.processor()


def compiler() -> str:
  """The C++ compiler kernels are built with: $CXX, else g++."""
  return os.environ.get('CXX', 'g++')


@functools.lru_cache(maxsize=None)
def load(source_name: str) -> ctypes.CDLL:
  """The shared library built from pdm_jax/kernels/<source_name> (built now if not cached); NativeBuildError if
  it cannot be."""
  source = pathlib.Path(__file__).with_name(source_name)
  command = [compiler(), *_FLAGS, f'-I{jax.ffi.include_dir()}']
  headers = [header.read_text() for header in sorted(source.parent.glob('*.h'))]
  key = hashlib.sha256('\0'.join([source.read_text(), *headers, *command, jaxlib.__version__,
                                  _cpu_signature()]).encode()).hexdigest()[:16]
  library = cache_dir() / f'{source.stem}-{key}.so'
  if not library.exists():
    if shutil.which(command[0]) is None:
      raise NativeBuildError(f'no C++ compiler {command[0]!r} to build {source_name}: install g++ (or set CXX)')
    library.parent.mkdir(parents=True, exist_ok=True)
    # Built beside its final name and renamed into place: processes building at once never load a partial file.
    with tempfile.TemporaryDirectory(dir=library.parent) as scratch:
      built = pathlib.Path(scratch) / library.name
      result = subprocess.run([*command, str(source), '-o', str(built)], capture_output=True, text=True,
                              check=False)
      if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or ['(no output)']
        first_error = next((line for line in lines if 'error' in line), lines[-1])
        raise NativeBuildError(f'{command[0]} failed to build {source_name}: {first_error}')
      os.replace(built, library)
  try:
    return ctypes.cdll.LoadLibrary(str(library))
  except OSError as e:
    raise NativeBuildError(f'cannot load {library}: {e}; delete it to rebuild') from e


@functools.lru_cache(maxsize=None)
def register(source_name: str, targets: tuple[tuple[str, str], ...]) -> str | None:
  """Builds (or loads) pdm_jax/kernels/<source_name> and registers each (FFI target name, exported handler symbol)
  for the CPU platform. None on success, else the one-line reason the kernel is unavailable; either is remembered,
  so a failing build is not retried in this process."""
  try:
    library = load(source_name)
  except NativeBuildError as e:
    return str(e)
  for target, symbol in targets:
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform='cpu')
  return None

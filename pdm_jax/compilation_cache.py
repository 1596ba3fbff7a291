"""JAX's persistent compilation cache, on by default: a resumed run, a rerun or a second process loads its compiled
programs from disk instead of compiling them again.

$PDM_JAX_COMPILATION_CACHE picks the folder (default <pdm_jax cache dir>/xla_cache, see $PDM_JAX_CACHE_DIR); '0',
'off', 'false' or 'no' turns the cache off. A folder JAX was already given ($JAX_COMPILATION_CACHE_DIR) is kept.
"""

import os

from absl import logging
import jax

from pdm_jax.evaluation import inception_weights

CACHE_ENV = 'PDM_JAX_COMPILATION_CACHE'
_OFF = ('0', 'off', 'false', 'no')


def cache_path() -> str | None:
  """The folder the cache should use, or None when $PDM_JAX_COMPILATION_CACHE turns it off."""
  value = os.environ.get(CACHE_ENV, '').strip()
  if value.lower() in _OFF:
    return None
  return os.path.expanduser(value) if value else str(inception_weights.cache_dir() / 'xla_cache')


def setup() -> str | None:
  """Turns the cache on (call before anything compiles); returns its folder, or None when it is off."""
  path = jax.config.jax_compilation_cache_dir or cache_path()
  if path is None:
    return None
  jax.config.update('jax_compilation_cache_dir', path)
  # JAX's defaults skip programs that compile in under a second and small entries: every program of a tiny or
  # CPU run would then be compiled again. Explicit JAX_* settings in the environment still win.
  if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  if 'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES' not in os.environ:
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)
  logging.info('Compilation cache: %s (%s=off disables it)', path, CACHE_ENV)
  return path

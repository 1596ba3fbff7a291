"""Shared test fixtures: tiny configs that compile in seconds on a CPU."""

import os
import sys
import tempfile

# Tests build the same tiny programs many times (every run makes a fresh jit closure): a persistent XLA cache,
# fresh per session and inherited by the command-line subprocesses, compiles each once.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='pdm_jax_test_xla_'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

# torchvision (the pytorch-fid / diffusers references) loads triton's native library, which segfaults if
# TensorFlow, jaxlib and scikit-learn are already loaded. Loading it first, when installed, avoids that.
try:
  import torchvision  # noqa: F401  pylint: disable=unused-import
except ImportError:
  pass

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from tests.tiny_configs import tiny_config  # noqa: F401  pylint: disable=g-import-not-at-top


@pytest.fixture
def tiny():
  return tiny_config

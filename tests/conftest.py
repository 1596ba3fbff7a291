"""Shared test fixtures: tiny configs that compile in seconds on a CPU."""

import os
import sys

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

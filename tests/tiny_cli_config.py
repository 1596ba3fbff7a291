"""A tiny config for command-line tests: python main.py --config=tests/tiny_cli_config.py:spdm --workdir=DIR."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.tiny_configs import tiny_config  # pylint: disable=g-import-not-at-top


def get_config(model_type: str = 'spdm'):
  return tiny_config(model_type)

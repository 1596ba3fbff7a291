"""Every script the README names starts from the repo root without installing the package."""

import glob
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

SCRIPTS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, 'scripts', '*.py')))


@pytest.mark.parametrize('script', SCRIPTS)
def test_script_help_runs(script, tmp_path):
  # A bare environment (no PYTHONPATH) run from elsewhere: what a user typing the README's command gets.
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  result = subprocess.run([sys.executable, os.path.join(REPO, 'scripts', script), '--help'], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
  output = result.stdout + result.stderr
  # argparse exits 0 after its usage; absl prints its flags and 'Try --helpfull' and exits 1.
  assert result.returncode == 0 or 'Try --helpfull' in output, output[-2000:]
  assert 'Traceback' not in output, output[-2000:]

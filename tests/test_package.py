"""pyproject.toml: the package installs (offline, into a throwaway venv), its `pdm-jax` console script runs main.py's
command line, and its metadata lists requirements.txt's dependencies."""

import json
import os
import shutil
import site
import subprocess
import sys

import pytest
from packaging.requirements import Requirement

from tests.conftest import REPO

# What a source checkout ships; tests/, scripts/ and the workdirs stay out of the package.
_SOURCES = ('pyproject.toml', 'requirements.txt', 'README.md', 'pdm_jax', 'configs')


def _run(args, cwd, check=True):
  # No PYTHONPATH: imports must come from the install, not from the checkout.
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env['PIP_DISABLE_PIP_VERSION_CHECK'] = '1'
  result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
  if check and result.returncode:
    raise AssertionError(result.stdout[-2000:] + result.stderr[-3000:])
  return result


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
  """A venv holding pdm-jax installed from a copy of the sources; the test venv's packages serve as dependencies."""
  root = tmp_path_factory.mktemp('package')
  source = root / 'src'  # a copy: building writes build/ and *.egg-info next to the sources
  source.mkdir()
  for name in _SOURCES:
    path = os.path.join(REPO, name)
    if os.path.isdir(path):
      shutil.copytree(path, source / name, ignore=shutil.ignore_patterns('__pycache__'))
    else:
      shutil.copy(path, source / name)
  venv = root / 'venv'
  _run([sys.executable, '-m', 'venv', '--system-site-packages', '--without-pip', str(venv)], cwd=root)
  python = venv / 'bin' / 'python'
  purelib = _run([str(python), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'], cwd=root)
  # --system-site-packages reaches the base interpreter, not this test venv: a .pth adds the test venv's packages
  # (pip, setuptools, jax, ...) after the new venv's own site-packages, so the install shadows any other copy.
  with open(os.path.join(purelib.stdout.strip(), 'test_venv.pth'), 'w') as f:
    f.write('\n'.join(site.getsitepackages()) + '\n')
  _run([str(python), '-m', 'pip', 'install', '--no-deps', '--no-build-isolation', '--no-index', '--no-cache-dir',
        str(source)], cwd=root)
  return root, venv


def test_install_provides_the_package_configs_and_metadata(installed):
  root, venv = installed
  code = ('import importlib.metadata as m, json, configs, configs.default, pdm_jax, pdm_jax.cli;'
          'print(pdm_jax.__file__); print(configs.__file__); print(m.version("pdm-jax"));'
          'print([e.value for e in m.entry_points(group="console_scripts", name="pdm-jax")]);'
          'print(json.dumps(m.requires("pdm-jax")))')
  lines = _run([str(venv / 'bin' / 'python'), '-c', code], cwd=root).stdout.strip().splitlines()
  site_packages = str(venv / 'lib')
  assert lines[0].startswith(site_packages) and lines[1].startswith(site_packages), lines
  assert lines[2] == '0.1.0'
  assert lines[3] == "['pdm_jax.cli:main']"
  with open(os.path.join(REPO, 'requirements.txt')) as f:
    expected = [str(Requirement(line.split('#')[0].strip())) for line in f if line.split('#')[0].strip()]
  assert [str(Requirement(r)) for r in json.loads(lines[4])] == expected


def test_console_script_is_main_py(installed):
  root, venv = installed
  script = venv / 'bin' / 'pdm-jax'
  assert script.is_file() and os.access(script, os.X_OK)
  # absl prints the usage and exits 1 on --help, as `python main.py --help` does.
  help_text = _run([str(script), '--help'], cwd=root, check=False)
  output = help_text.stdout + help_text.stderr
  assert 'pdm-jax command line' in output and '--workdir' in output and '--mode' in output, output[-2000:]
  assert 'Traceback' not in output
  # A config file given by path imports configs.default from the install; bad input stops with main.py's one line.
  bad = _run([str(script), f'--config={os.path.join(REPO, "configs", "digits_ddpm.py")}', f'--workdir={root / "w"}',
              '--config.model.type=gan'], cwd=root, check=False)
  assert bad.returncode == 1
  assert bad.stderr.strip().splitlines()[-1] == (
      "error: Unknown model.type='gan': use one of ddpm, cddpm, protodiffusion, pdm, spdm.")


def test_installed_package_ships_and_builds_the_cpu_kernels(installed, tmp_path):
  root, venv = installed
  code = ('import pathlib, pdm_jax.kernels.attention_cpu as k, pdm_jax.kernels.native_build as b;'
          'import pdm_jax.kernels.conv_weight_grad_cpu as c, pdm_jax.kernels.winograd_cpu as w;'
          'print(pathlib.Path(b.__file__).with_name("attention_cpu.cc").is_file()); print(k.unavailable_reason());'
          'print(c.unavailable_reason()); print(w.unavailable_reason())')  # they include the shipped headers
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env.update(PDM_JAX_KERNEL_CACHE=str(tmp_path), JAX_PLATFORMS='cpu')
  result = subprocess.run([str(venv / 'bin' / 'python'), '-c', code], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
  assert result.stdout.split() == ['True', 'None', 'None', 'None'], result.stdout + result.stderr[-2000:]
  for kernel in ('attention_cpu', 'conv_weight_grad_cpu', 'winograd_cpu'):
    assert list(tmp_path.glob(f'{kernel}-*.so')), kernel

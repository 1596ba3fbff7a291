"""The persistent compilation cache main.py turns on: where it lives, how it is turned off, and that a second run of
the same training compiles nothing new."""

import os
import subprocess
import sys

from pdm_jax import compilation_cache
from pdm_jax.evaluation import inception_weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
  monkeypatch.delenv(compilation_cache.CACHE_ENV, raising=False)
  monkeypatch.setenv(inception_weights.CACHE_DIR_ENV, str(tmp_path / 'pdm'))
  assert compilation_cache.cache_path() == str(tmp_path / 'pdm' / 'xla_cache')
  monkeypatch.setenv(compilation_cache.CACHE_ENV, str(tmp_path / 'elsewhere'))
  assert compilation_cache.cache_path() == str(tmp_path / 'elsewhere')
  for off in ('0', 'off', 'OFF', 'false', 'no'):
    monkeypatch.setenv(compilation_cache.CACHE_ENV, off)
    assert compilation_cache.cache_path() is None


def _train(workdir: str, cache: str, **extra_env: str) -> None:
  # The test session's own cache settings (conftest) must not stand in for main.py's.
  env = {k: v for k, v in os.environ.items() if not k.startswith('JAX_COMPILATION_CACHE')
         and not k.startswith('JAX_PERSISTENT_CACHE')}
  env.update(PYTHONPATH=REPO, **{compilation_cache.CACHE_ENV: cache}, **extra_env)
  result = subprocess.run([sys.executable, os.path.join(REPO, 'main.py'), '--config=tests/tiny_cli_config.py:spdm',
                           f'--workdir={workdir}', '--config.train.num_steps=2', '--config.train.log_every=1',
                           '--config.sample.num_samples=4', '--config.sample.batch_size=4'],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]


def _entries(cache: str) -> dict[str, float]:
  return {name: os.path.getmtime(os.path.join(cache, name)) for name in os.listdir(cache)}


def test_a_second_run_compiles_nothing_new(tmp_path):
  cache = str(tmp_path / 'cache')
  _train(str(tmp_path / 'first'), cache)
  first = _entries(cache)
  # Small programs are cached too (JAX's defaults skip those compiled in under a second: jnp.sin, the probe of
  # pdm_jax/xla_options.py), and the train step and sampler.
  assert any(name.startswith('jit_sin-') for name in first), sorted(first)
  assert any(name.startswith('jit_train_step-') for name in first), sorted(first)
  assert any(name.startswith('jit_run-') for name in first), sorted(first)
  _train(str(tmp_path / 'second'), cache)
  assert _entries(cache) == first


def test_the_cache_can_be_turned_off(tmp_path):
  _train(str(tmp_path / 'run'), 'off', **{inception_weights.CACHE_DIR_ENV: str(tmp_path / 'pdm')})
  assert os.path.exists(os.path.join(tmp_path, 'run', 'samples', 'final.npz'))
  assert not os.path.exists(os.path.join(tmp_path, 'pdm', 'xla_cache'))
  assert not os.path.exists(os.path.join(REPO, 'off'))  # not taken for a folder name either

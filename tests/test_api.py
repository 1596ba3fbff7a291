"""pdm_jax.load: a trained workdir as a Python object, and the README's example run as written."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pdm_jax
from pdm_jax import diffusion
from pdm_jax import run
from tests.conftest import REPO
from tests.conftest import tiny_config


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A tiny s-PDM and PDM, 4 steps each on digits: {model_type: workdir}."""
  workdirs = {}
  for model_type in ('spdm', 'pdm'):
    workdir = str(tmp_path_factory.mktemp(model_type))
    config = tiny_config(model_type, num_steps=4)
    config.model.prototype_dim = 64  # the README example's shape
    run.train_and_evaluate(config, workdir)
    workdirs[model_type] = workdir
  return workdirs


def test_load_rebuilds_the_run_from_its_saved_config(trained):
  model = pdm_jax.load(trained['spdm'])
  assert model.kind.name == 'spdm' and model.step == 4 and model.image_shape == (8, 8, 1)
  assert model.config.diffusion.num_timesteps == 50
  images = model.sample(6, method='ddim', num_steps=3, label=2, seed=1)
  assert images.shape == (6, 8, 8, 1) and images.dtype == np.uint8
  np.testing.assert_array_equal(images, model.sample(6, method='ddim', num_steps=3, label=2, seed=1))
  assert not np.array_equal(images, model.sample(6, method='ddim', num_steps=3, label=2, seed=2))
  with pytest.raises(ValueError, match='sample.label=10 is out of range'):
    model.sample(2, label=10)


def test_predict_noise_is_the_networks_epsilon(trained):
  model = pdm_jax.load(trained['pdm'])
  x_t = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 1))
  ids = jnp.array([0, 4, 9])
  expected, _ = model.model.apply(model.variables, x_t, jnp.full((3,), 7), prototype_ids=ids)
  expected = diffusion.to_epsilon(model.schedule, expected, x_t, jnp.full((3,), 7), 'epsilon')
  np.testing.assert_allclose(model.predict_noise(x_t, 7, prototype=ids), expected, rtol=1e-6)
  with pytest.raises(ValueError, match='model.type=pdm is conditional: pass prototype='):
    model.predict_noise(x_t, 7)


def test_prototypes_and_assign(trained):
  model = pdm_jax.load(trained['pdm'])
  assert model.prototypes().shape == (10, 64)
  images = model.sample(5, method='ddim', num_steps=2, prototype=3)
  _, expected = model.model.apply(model.variables, jnp.asarray(images, jnp.float32) / 127.5 - 1.0,
                                  method=model.model.nearest_prototypes)
  np.testing.assert_array_equal(model.assign(images), expected)


def test_a_workdir_without_config_says_how(tmp_path):
  with pytest.raises(FileNotFoundError, match=r'config.json does not exist: pass config='):
    pdm_jax.load(str(tmp_path))


def test_the_readme_example_runs_as_written(trained, tmp_path, monkeypatch):
  with open(os.path.join(REPO, 'README.md')) as f:
    readme = f.read()
  section = readme[readme.index('### Python API'):]
  code = re.search(r'```python\n(.*?)```', section, re.S).group(1)
  assert "pdm_jax.load('workdirs/digits_spdm')" in code
  os.makedirs(tmp_path / 'workdirs')
  os.symlink(trained['spdm'], tmp_path / 'workdirs' / 'digits_spdm')
  monkeypatch.chdir(tmp_path)
  namespace = {}
  exec(compile(code, 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  assert namespace['images'].shape == (20, 8, 8, 1) and namespace['noise'].shape == (20, 8, 8, 1)
  assert namespace['prototypes'].shape == (10, 64)

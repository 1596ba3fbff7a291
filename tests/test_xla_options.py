"""The CPU compiler options: chosen on a CPU, off on request, skipped by a jaxlib that lacks them, passed to the train
step and the sampler, and without effect on what the step computes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdm_jax import data
from pdm_jax import xla_options
from pdm_jax.inference import generate
from pdm_jax.training import loop
from pdm_jax.training import sharding
from pdm_jax.training import train_step as train_step_lib
from tests.tiny_configs import tiny_config


@pytest.fixture(autouse=True)
def _fresh_probe():
  xla_options.compiler_options.cache_clear()
  yield
  xla_options.compiler_options.cache_clear()


def test_cpu_gets_the_ynn_option_unless_turned_off(monkeypatch):
  assert xla_options.compiler_options() == {xla_options._YNN_FUSION_OPTION: xla_options._YNN_FUSIONS}
  xla_options.compiler_options.cache_clear()
  monkeypatch.setenv('PDM_JAX_XLA_TUNING', '0')
  assert xla_options.compiler_options() is None


def test_a_rejected_option_falls_back_to_the_defaults(monkeypatch):
  monkeypatch.setattr(xla_options, '_YNN_FUSIONS', 'NOT_A_FUSION_TYPE')
  assert xla_options.compiler_options() is None


def _experiment(tmp_path, model_type='pdm'):
  config = tiny_config(model_type, batch_size=8)
  mesh = sharding.data_mesh(jax.devices()[:1])
  info, batches = data.build(config.data, global_batch_size=8, seed=config.seed)
  return loop.build_experiment(config, str(tmp_path), info, mesh), sharding.global_batch(next(batches), mesh)


def _step(experiment):
  return train_step_lib.make_train_step(experiment.model, experiment.tx, experiment.schedule, experiment.config,
                                        experiment.learning_rate_fn, experiment.mesh)


def test_train_step_and_sampler_are_compiled_with_the_options(tmp_path, monkeypatch):
  # An option XLA rejects proves the programs are compiled with what compiler_options() returns.
  monkeypatch.setattr(xla_options, 'compiler_options', lambda: {xla_options._YNN_FUSION_OPTION: 'BOGUS'})
  experiment, batch = _experiment(tmp_path)
  state = loop.initial_state(experiment)
  with pytest.raises(Exception, match='BOGUS'):
    _step(experiment).lower(state, batch).compile()
  sampler = generate.make_sampler(experiment.model, experiment.schedule, experiment.config.sample,
                                  experiment.config.diffusion.prediction_type, (8, 8, 8, 1), experiment.mesh)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  with pytest.raises(Exception, match='BOGUS'):
    sampler.lower(variables, jax.random.key(0), jnp.zeros(8, jnp.int32)).compile()


def _max_relative_difference(a: dict, b: dict) -> float:
  assert set(a) == set(b)
  return max(float(np.abs(a[k] - b[k])) / max(float(np.abs(b[k])), 1e-6) for k in a)


def test_the_options_do_not_change_the_step(tmp_path, monkeypatch):
  """Same metrics (loss terms, gradient and parameter norms) to 1e-5 relative over two fp32 steps with and without
  the options. The second step's metrics depend on the first update.

  Parameters are not compared leaf by leaf: convolutions summed in another order round differently, and Adam's
  g / (|g| + eps) magnifies that where |g| ~ eps (measured 2e-4 of a leaf's max; see test_grad_accum).
  """
  results = []
  for tuned in (True, False):
    monkeypatch.setenv('PDM_JAX_XLA_TUNING', '1' if tuned else '0')
    xla_options.compiler_options.cache_clear()
    assert (xla_options.compiler_options() is not None) == tuned
    experiment, batch = _experiment(tmp_path / str(tuned))
    state, step = loop.initial_state(experiment), _step(experiment)
    metrics = {}
    for i in range(2):
      state, step_metrics = step(state, batch)
      metrics.update({f'{name}{i}': np.asarray(value) for name, value in jax.device_get(step_metrics).items()})
    results.append(metrics)
  assert _max_relative_difference(*results) <= 1e-5

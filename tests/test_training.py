"""Training: step semantics, sharding invariance over forced CPU devices, exact resume, bad input."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdm_jax.training import checkpoints
from pdm_jax.training import loop
from pdm_jax.training import train_step as train_step_lib
from tests.conftest import REPO
from tests.conftest import tiny_config


def test_prototype_usage_counts_and_entropy():
  usage = train_step_lib.prototype_usage(jnp.array([0, 0, 1, 3]), num_prototypes=5)
  assert float(usage['prototypes_used']) == 3.0
  probs = np.array([0.5, 0.25, 0.25])
  assert float(usage['prototype_entropy']) == pytest.approx(-(probs * np.log(probs)).sum(), rel=1e-6)


def test_ema_decay_warms_up():
  assert float(train_step_lib.ema_decay_at(jnp.array(0), 0.999)) == pytest.approx(0.1)
  assert float(train_step_lib.ema_decay_at(jnp.array(10**7), 0.999)) == pytest.approx(0.999)


def _params(state):
  return jax.tree.map(np.asarray, jax.device_get(state.params))


def _assert_trees_close(a, b, rtol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * max(1e-3, float(np.abs(y).max())))


def test_training_reduces_the_loss_and_updates_ema(tmp_path):
  config = tiny_config('spdm', num_steps=30, learning_rate=3e-3, log_every=30, checkpoint_every=100)
  experiment, state = loop.train(config, str(tmp_path))
  assert int(state.step) == 30
  fresh = loop.build_experiment(config, str(tmp_path / 'fresh'), experiment.info)
  init_params = _params(loop.initial_state(fresh))
  moved = [float(np.abs(p - q).max()) for p, q in zip(jax.tree.leaves(_params(state)), jax.tree.leaves(init_params))]
  assert max(moved) > 1e-3
  ema_gap = [float(np.abs(e - p).max())
             for e, p in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(state.params))]
  assert max(ema_gap) > 0.0  # EMA lags the raw params
  events = [f for f in os.listdir(tmp_path) if 'tfevents' in f]
  assert events, 'metrics must reach TensorBoard event files in the workdir'


# Attention key biases shift every logit of a query equally, so softmax makes their gradient exactly zero; in
# fp32 it is rounding noise that depends on the reduction order, which Adam scales to lr-sized steps. They
# cannot change any output, so the test compares them through the network's output instead.
_NULL_GRADIENT_KEYS = ("['to_k']['bias']", "['k_proj']['bias']")


def test_sharding_invariance_one_vs_four_devices(tmp_path):
  """20 steps on a 1-device and a 4-device mesh (forced CPU devices), same global batch: same parameters."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4', PYTHONPATH=REPO)
  outputs = {}
  for devices in (1, 4):
    out = tmp_path / f'params_{devices}.npz'
    subprocess.run([sys.executable, os.path.join(REPO, 'tests', 'sharding_run.py'), 'pdm', str(devices), '20',
                    str(out)], check=True, env=env, cwd=REPO, capture_output=True)
    outputs[devices] = np.load(out)
  one, four = outputs[1], outputs[4]
  assert set(one.files) == set(four.files)
  compared = [k for k in one.files if k != 'output' and not any(null in k for null in _NULL_GRADIENT_KEYS)]
  assert len(compared) > 50
  for key in compared + ['output']:
    scale = max(float(np.abs(one[key]).max()), 1e-12)
    assert float(np.abs(one[key] - four[key]).max()) / scale < 1e-5, key
class _Interrupt(Exception):
  pass


def test_killed_run_resumes_to_the_same_parameters(tmp_path, monkeypatch):
  config = tiny_config('pdm', num_steps=10, checkpoint_every=4)
  _, straight = loop.train(config, str(tmp_path / 'straight'))

  real_make = train_step_lib.make_train_step

  def dying_make(*args, **kwargs):
    step_fn = real_make(*args, **kwargs)
    calls = {'n': 0}

    def wrapped(state, batch):
      calls['n'] += 1
      if calls['n'] == 7:  # after the checkpoint at step 4, before the one at 8
        raise _Interrupt()
      return step_fn(state, batch)
    return wrapped

  monkeypatch.setattr(train_step_lib, 'make_train_step', dying_make)
  with pytest.raises(_Interrupt):
    loop.train(config, str(tmp_path / 'resumed'))
  monkeypatch.setattr(train_step_lib, 'make_train_step', real_make)
  ckpt = checkpoints.Checkpointer(str(tmp_path / 'resumed'), 4, 3)
  assert ckpt.latest_step() == 4
  ckpt.close()
  _, resumed = loop.train(config, str(tmp_path / 'resumed'))
  assert int(resumed.step) == 10
  _assert_trees_close(_params(resumed), _params(straight), rtol=1e-6)
  _assert_trees_close(jax.device_get(resumed.ema_params), jax.device_get(straight.ema_params), rtol=1e-6)


def test_checkpoint_of_another_model_is_refused_in_one_line(tmp_path):
  loop.train(tiny_config('spdm', num_steps=4), str(tmp_path))
  other = tiny_config('spdm', num_steps=8)
  other.model.block_out_channels = (16, 16)
  with pytest.raises(checkpoints.CheckpointError, match='different model') as error:
    loop.train(other, str(tmp_path))
  assert '\n' not in str(error.value) and 'block_out_channels' in str(error.value)
  assert os.path.isdir(tmp_path / 'checkpoints' / '4')  # nothing already saved is lost

"""Fault injection: non-finite steps, SIGTERM at awkward moments, two runs on one workdir, bad input before any work."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from pdm_jax import run
from pdm_jax import workdir_lock
from pdm_jax.training import checkpoints
from pdm_jax.training import loop
from pdm_jax.training import train_step as train_step_lib
from tests.conftest import REPO
from tests.conftest import tiny_config


def _saved_params(workdir: str, step: int) -> list[np.ndarray]:
  """The parameters saved as checkpoint `step` of workdir, as numpy leaves (read back without a target)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  restored = ocp.StandardCheckpointer().restore(os.path.join(workdir, 'checkpoints', str(step), 'default'))
  return [np.asarray(leaf) for leaf in jax.tree.leaves(restored['params'])]


def _params(state) -> list[np.ndarray]:
  return [np.asarray(leaf) for leaf in jax.tree.leaves(jax.device_get(state.params))]


def _assert_close(a: list[np.ndarray], b: list[np.ndarray]) -> None:
  for x, y in zip(a, b, strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6 * max(1e-3, float(np.abs(y).max())))


class _StepWrapper:
  """Wraps make_train_step so that call number `call` of the step runs `action(state, batch)` instead."""

  def __init__(self, monkeypatch, call: int, action):
    self.real, self.call, self.action = train_step_lib.make_train_step, call, action
    monkeypatch.setattr(train_step_lib, 'make_train_step', self._make)

  def _make(self, *args, **kwargs):
    step_fn, calls = self.real(*args, **kwargs), [0]

    def wrapped(state, batch):
      calls[0] += 1
      return self.action(step_fn, state, batch) if calls[0] == self.call else step_fn(state, batch)
    return wrapped


def test_a_non_finite_step_is_never_saved_and_the_rerun_resumes_from_the_last_good_one(tmp_path, monkeypatch):
  config = tiny_config('pdm', num_steps=8, checkpoint_every=2)
  _, straight = loop.train(config, str(tmp_path / 'straight'))
  workdir = str(tmp_path / 'poisoned')
  # Step 6 (a checkpoint step) sees a NaN batch, as from a corrupt image: its loss, gradients and update are NaN.
  poison = lambda step_fn, state, batch: step_fn(state, {**batch, 'image': batch['image'] * np.nan})
  _StepWrapper(monkeypatch, 6, poison)
  with pytest.raises(loop.NonFiniteError) as error:
    loop.train(config, workdir)
  message = str(error.value)
  assert message.startswith('step 6 was not finite') and '\n' not in message
  assert f'checkpoint 4 in {os.path.join(workdir, "checkpoints")} is the last good one' in message
  saved = sorted(int(name) for name in os.listdir(os.path.join(workdir, 'checkpoints')) if name.isdigit())
  assert max(saved) == 4
  for step in saved:
    assert all(np.isfinite(leaf).all() for leaf in _saved_params(workdir, step))
  monkeypatch.undo()
  _, resumed = loop.train(config, workdir)  # from checkpoint 4, with the data it would have seen
  assert int(resumed.step) == 8
  _assert_close(_params(resumed), _params(straight))


def test_skip_mode_drops_the_non_finite_update_and_trains_on(tmp_path, monkeypatch):
  config = tiny_config('pdm', num_steps=6, checkpoint_every=3, log_every=3)
  config.train.on_nonfinite = 'skip'
  around_skip = []

  def poison(step_fn, state, batch):
    before = _params(state)  # read before the step donates the state's buffers
    out = step_fn(state, {**batch, 'image': batch['image'] * np.nan})
    around_skip.append((before, _params(out[0]), int(out[0].step), float(out[1]['skipped'])))
    return out
  _StepWrapper(monkeypatch, 2, poison)
  seen = []
  real_write = loop.metric_writers.create_default_writer

  def recording_writer(*args, **kwargs):
    writer = real_write(*args, **kwargs)
    write_scalars = writer.write_scalars
    writer.write_scalars = lambda step, scalars: (seen.append((step, dict(scalars))), write_scalars(step, scalars))
    return writer
  monkeypatch.setattr(loop.metric_writers, 'create_default_writer', recording_writer)
  _, state = loop.train(config, str(tmp_path))
  assert int(state.step) == 6 and all(np.isfinite(leaf).all() for leaf in _params(state))
  # The poisoned step counted (the data moved on) but left the parameters exactly as they were.
  (before, after, step, skipped), = around_skip
  assert step == 2 and skipped == 1.0
  for x, y in zip(before, after, strict=True):
    np.testing.assert_array_equal(x, y)
  # Step 2 of the first window of three was skipped; its NaN loss does not blank the window's average.
  windows = {step: scalars for step, scalars in seen if 'skipped' in scalars}
  assert windows[3]['skipped'] == pytest.approx(1 / 3) and windows[6]['skipped'] == 0.0
  assert np.isfinite(windows[3]['loss'])


def _sigterm_after(step_fn, state, batch):
  out = step_fn(state, batch)
  os.kill(os.getpid(), signal.SIGTERM)
  return out


def _preemption_config():
  return tiny_config('pdm', num_steps=8, checkpoint_every=4)


@pytest.fixture(scope='module')
def straight_params(tmp_path_factory):
  """The parameters of the uninterrupted run that every preempted-and-resumed run must end with."""
  _, straight = loop.train(_preemption_config(), str(tmp_path_factory.mktemp('straight')))
  return _params(straight)


@pytest.mark.parametrize('sigterm_step', [1, 4, 5])  # the first step (saved anyway), a checkpoint step, another one
def test_sigterm_saves_once_exits_143_and_the_rerun_ends_as_an_uninterrupted_run(tmp_path, monkeypatch, sigterm_step,
                                                                                 straight_params):
  config = _preemption_config()
  handler_before = signal.getsignal(signal.SIGTERM)
  workdir = str(tmp_path / 'preempted')
  _StepWrapper(monkeypatch, sigterm_step, _sigterm_after)
  with pytest.raises(loop.Preempted) as stopped:
    loop.train(config, workdir)
  assert stopped.value.code == loop.PREEMPTED_EXIT_CODE == 143
  assert f'at step {sigterm_step}' in str(stopped.value)
  checkpointer = checkpoints.Checkpointer(workdir, 4, 3)
  assert checkpointer.latest_step() == sigterm_step
  checkpointer.close()
  # Outside training (final sampling, evaluation) SIGTERM has its usual effect again.
  assert signal.getsignal(signal.SIGTERM) == handler_before
  monkeypatch.undo()
  _, resumed = loop.train(config, workdir)
  assert int(resumed.step) == 8
  _assert_close(_params(resumed), straight_params)


def test_a_second_run_on_a_workdir_stops_at_once_naming_the_first(tmp_path):
  workdir = str(tmp_path)
  with workdir_lock.WorkdirLock(workdir, 'train'):
    start = time.time()
    result = subprocess.run([sys.executable, os.path.join(REPO, 'main.py'), '--config=tests/tiny_cli_config.py:spdm',
                             f'--workdir={workdir}'], cwd=REPO, capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=REPO))
    elapsed = time.time() - start
  last = result.stderr.strip().splitlines()[-1]
  assert result.returncode != 0 and last.startswith('error: ') and 'is in use by a --mode=train run' in last
  assert f'pid {os.getpid()}' in last
  assert not os.path.exists(os.path.join(workdir, 'checkpoints'))
  assert elapsed < 60  # stopped before any training (a tiny run takes minutes here)


def test_a_lock_left_by_a_killed_run_is_not_in_the_way(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time; from pdm_jax import workdir_lock\n'
       f'with workdir_lock.WorkdirLock({str(tmp_path)!r}, "train"):\n  print("held", flush=True); time.sleep(600)'],
      cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == 'held'
  with pytest.raises(workdir_lock.WorkdirBusyError, match=f'pid {holder.pid}'):
    with workdir_lock.WorkdirLock(str(tmp_path), 'sample'):
      pass
  holder.kill()  # kill -9: no clean-up ran
  holder.wait()
  with workdir_lock.WorkdirLock(str(tmp_path), 'sample'):
    pass


# Bad input found before any data is read or anything compiles; each message names the field.
BAD_INPUTS = [
    ('train.keep_checkpoints', 0, 'train.keep_checkpoints=0 must be an integer >= 1'),
    ('train.num_steps', 0, 'train.num_steps=0 must be an integer >= 1'),
    ('train.batch_size', 0, 'train.batch_size=0 must be an integer >= 1'),
    ('train.checkpoint_every', 0, 'train.checkpoint_every=0 must be an integer >= 1'),
    ('train.log_every', -1, 'train.log_every=-1 must be an integer >= 1'),
    ('train.learning_rate', 0.0, 'train.learning_rate=0.0 must be a number > 0.0'),
    ('train.ema_decay', 1.0, 'train.ema_decay=1.0 must be a number >= 0.0 and < 1.0'),
    ('train.grad_accum_steps', 5, 'does not split train.batch_size=12'),
    ('diffusion.schedule', 'cubic', "Unknown schedule 'cubic'"),
    ('diffusion.num_timesteps', 1, 'diffusion.num_timesteps=1 must be an integer >= 2'),
    ('diffusion.prediction_type', 'x0', "diffusion.prediction_type='x0' is unknown"),
    ('diffusion.loss_weighting', 'snr', "diffusion.loss_weighting='snr' is unknown"),
    ('diffusion.beta_end', 2.0, 'must satisfy 0 < beta_start < beta_end < 1'),
    ('model.dtype', 'float16', "model.dtype='float16' is not supported"),
    ('model.attention_impl', 'flash', "model.attention_impl='flash' is unknown"),
    ('sample.method', 'euler', "Unknown sampling method sample.method='euler'"),
    ('sample.num_steps', 51, r'sample.num_steps must be an int in [1, 50]'),
    ('sample.label', 10, 'sample.label=10 is out of range: the model has classes 0..9'),
    ('sample.num_samples', 0, 'sample.num_samples=0 must be at least 1'),
]


@pytest.mark.parametrize('field,value,expected', BAD_INPUTS)
def test_bad_config_fields_stop_before_any_work(tmp_path, field, value, expected):
  config = tiny_config('spdm', batch_size=12)
  section, name = field.split('.')
  config[section][name] = value
  with pytest.raises(ValueError) as error:
    run.train_and_evaluate(config, str(tmp_path))
  assert expected in str(error.value) and '\n' not in str(error.value)
  assert not os.listdir(tmp_path)  # nothing written, not even the lock


@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_every_missing_asset_is_named_at_once(tmp_path, mode):
  # Offline, with neither the prepared dataset nor the Inception weights: one line names both and how to get each.
  config = tiny_config('spdm', num_steps=1)
  config.data.name = 'cifar10'
  config.data.image_size = 8
  config.data.num_channels = 3
  config.data.data_dir = str(tmp_path / 'tfds')
  config.eval.every_steps = 1
  config.eval.inception_weights = str(tmp_path / 'pt_inception.pth')
  entry = run.train_and_evaluate if mode == 'train' else run.evaluate
  if mode == 'eval':  # eval first asks for a checkpoint; a step folder is enough to get past that
    os.makedirs(tmp_path / 'run' / 'checkpoints' / '1')
  with pytest.raises(FileNotFoundError) as error:
    entry(config, str(tmp_path / 'run'))
  message = str(error.value)
  assert message.startswith('2 things are missing: (1) no Inception weights file at') and '\n' not in message
  assert '(2) cifar10 is not prepared under data_dir=' in message and 'scripts/prepare_data.py' in message
  assert os.listdir(tmp_path) == (['run'] if mode == 'eval' else [])  # nothing written by the run


def test_a_workdir_that_is_a_file_is_one_line(tmp_path):
  path = tmp_path / 'a_file'
  path.write_text('')
  with pytest.raises(ValueError, match='--workdir=.*a_file cannot be used .*: pass a writable directory'):
    run.train_and_evaluate(tiny_config('spdm', num_steps=1), str(path))


def test_a_corrupt_latest_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(tmp_path):
  config = tiny_config('pdm', num_steps=8, checkpoint_every=4)
  _, straight = loop.train(config, str(tmp_path / 'straight'))
  workdir = str(tmp_path / 'corrupt')
  loop.train(config, workdir)
  # The saved state's data files of the latest checkpoint become garbage (a bad disk, a partial copy).
  latest = os.path.join(workdir, 'checkpoints', '8', 'default')
  for root, _, files in os.walk(latest):
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'garbage')
  _, resumed = loop.train(config, workdir)  # falls back to checkpoint 4 and trains steps 5..8 again
  assert int(resumed.step) == 8
  assert os.path.isdir(os.path.join(workdir, 'checkpoints_set_aside', '8'))  # kept, not deleted
  _assert_close(_params(resumed), _params(straight))


def test_probability_flow_that_does_not_reach_the_data_returns_nan_not_a_half_solved_state():
  from pdm_jax import diffusion  # pylint: disable=g-import-not-at-top
  from pdm_jax.sampling import probability_flow  # pylint: disable=g-import-not-at-top
  schedule = diffusion.make_schedule('linear', 50)
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 1))
  eps_fn = lambda x_t, t: 0.5 * x_t
  x0, _ = probability_flow.probability_flow_solve(eps_fn, schedule, x)
  assert np.isfinite(np.asarray(x0)).all()
  stopped, nfe = probability_flow.probability_flow_solve(eps_fn, schedule, x, max_steps=2)
  assert np.isnan(np.asarray(stopped)).all() and int(nfe) == 13  # 1 + 2 attempts x 6 stages
  broken, _ = probability_flow.probability_flow_solve(lambda x_t, t: x_t * np.nan, schedule, x)
  assert np.isnan(np.asarray(broken)).all()

"""Several real processes: main.py started by scripts/launch_local.py as 2 processes x 2 forced CPU devices ends as
1 process x 4 devices does, uninterrupted and after kills (SIGKILL of both, SIGTERM to one) and resumes."""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from pdm_jax.inference import restore
from pdm_jax.training import checkpoints
from pdm_jax.training import loop
from tests.tiny_configs import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 16
# Every run of this file: the tiny s-PDM on digits, NUM_STEPS steps, a checkpoint every 4, a log line every 2.
RUN_ARGS = ('--config=tests/tiny_cli_config.py:spdm', f'--config.train.num_steps={NUM_STEPS}',
            '--config.train.checkpoint_every=4', '--config.train.log_every=2')
# Attention key biases get a pure rounding-noise gradient (softmax cancels them exactly), which Adam scales to
# lr-sized steps whose sign depends on the summation order; they change no output (the samples below show it).
_NULL_GRADIENT_KEY = "['to_k']['bias']"
_TOLERANCE = 1e-5


class Launch:
  """scripts/launch_local.py running main.py in the background; its output is collected line by line."""

  def __init__(self, processes: int, devices: int, workdir: str, *extra: str):
    command = [sys.executable, os.path.join(REPO, 'scripts', 'launch_local.py'), f'--processes={processes}',
               f'--devices_per_process={devices}', *RUN_ARGS, f'--workdir={workdir}', *extra]
    self.process = subprocess.Popen(command, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
    self.lines: list[str] = []
    self._reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
    self._reader.start()

  def wait_for(self, pattern: str, timeout: float = 300) -> re.Match:
    """The first output line matching `pattern` (waiting for it to appear)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      for line in list(self.lines):
        match = re.search(pattern, line)
        if match:
          return match
      if self.process.poll() is not None and not self._reader.is_alive():
        break
      time.sleep(0.2)
    raise AssertionError(f'no line matches {pattern!r}; output:\n{self.output()[-3000:]}')

  def pid(self, index: int) -> int:
    return int(self.wait_for(rf'^\[launch\] process {index}: pid (\d+)').group(1))

  def finish(self, timeout: float = 600) -> int:
    code = self.process.wait(timeout=timeout)
    self._reader.join(timeout=10)
    return code

  def output(self) -> str:
    return ''.join(self.lines)


def _run(processes: int, devices: int, workdir: str, *extra: str) -> str:
  launch = Launch(processes, devices, workdir, *extra)
  code = launch.finish()
  assert code == 0, launch.output()[-3000:]
  return launch.output()


def _state(workdir: str) -> dict[str, np.ndarray]:
  """The latest checkpoint in workdir, restored here (one process), as {path: array}."""
  config = tiny_config('spdm', num_steps=NUM_STEPS, checkpoint_every=4, log_every=2)
  experiment, state = restore.restore_latest(config, workdir)
  experiment.checkpointer.close()
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(state))}


def _assert_same_run(workdir: str, reference: str) -> None:
  """The same final state (every parameter, EMA and optimizer moment, to 1e-5 relative) and the same samples."""
  ours, theirs = _state(workdir), _state(reference)
  assert set(ours) == set(theirs)
  assert int(ours['.step']) == int(theirs['.step']) == NUM_STEPS
  compared = [key for key in ours if _NULL_GRADIENT_KEY not in key]
  assert len(compared) > 100
  for key in compared:
    a, b = ours[key].astype(np.float64), theirs[key].astype(np.float64)
    assert np.abs(a - b).max() <= _TOLERANCE * max(np.abs(b).max(), 1.0), key
  samples, expected = (np.load(os.path.join(w, 'samples', 'final.npz')) for w in (workdir, reference))
  assert set(samples.files) == set(expected.files) == {'images', 'labels'}
  for name in expected.files:
    np.testing.assert_array_equal(samples[name], expected[name])


@pytest.fixture(scope='module')
def reference(tmp_path_factory) -> str:
  """One process with 4 devices: the run the multi-process ones must reproduce."""
  workdir = str(tmp_path_factory.mktemp('one_process') / 'run')
  output = _run(1, 4, workdir)
  assert 'JAX processes 0/1' in output
  return workdir


def test_two_processes_end_as_one_process_with_the_same_devices(reference, tmp_path):
  workdir = str(tmp_path / 'run')
  output = _run(2, 2, workdir)
  assert '[p1] ' in output and re.search(r'JAX processes 1/2, local devices \[\w+\(id=\d+\), \w+\(id=\d+\)\]', output)
  # Process 0 alone writes the samples and the TensorBoard events.
  assert output.count('Wrote 12 samples') == 1
  _assert_same_run(workdir, reference)
  # --mode=sample on two processes: the checkpoint restored across them, the same samples drawn again.
  os.rename(os.path.join(workdir, 'samples'), os.path.join(workdir, 'samples_of_training'))
  _run(2, 2, workdir, '--mode=sample')
  for name in ('images', 'labels'):
    np.testing.assert_array_equal(np.load(os.path.join(workdir, 'samples', 'final.npz'))[name],
                                  np.load(os.path.join(workdir, 'samples_of_training', 'final.npz'))[name])


def test_killed_and_preempted_processes_resume_and_end_as_an_uninterrupted_run(reference, tmp_path):
  workdir = str(tmp_path / 'run')
  # 1) SIGKILL to both processes once a checkpoint (beyond step 1, saved first in any directory) exists.
  first = Launch(2, 2, workdir)
  pids = [first.pid(0), first.pid(1)]
  deadline = time.monotonic() + 300
  while not os.path.isdir(os.path.join(workdir, 'checkpoints', '4')):
    assert first.process.poll() is None and time.monotonic() < deadline, first.output()[-3000:]
    time.sleep(0.1)
  for pid in pids:
    os.kill(pid, signal.SIGKILL)
  assert first.finish() == 128 + signal.SIGKILL

  # 2) The rerun resumes; SIGTERM reaches process 1 only: both stop, save and exit 143 at the same step.
  second = Launch(2, 2, workdir)
  resumed = int(second.wait_for(r'\[p1\] .*Resuming from checkpoint (\d+)').group(1))
  assert resumed >= 4
  second.wait_for(r'\[p1\] .*\[\d+\] .*\bloss=')  # a logged step (the metric writer's line): training again
  os.kill(second.pid(1), signal.SIGTERM)
  assert second.finish() == loop.PREEMPTED_EXIT_CODE, second.output()[-3000:]
  stops = [int(second.wait_for(rf'\[p{i}\] .*Preempted \(SIGTERM\) at step (\d+)').group(1)) for i in (0, 1)]
  assert stops[0] == stops[1] < NUM_STEPS, second.output()[-3000:]
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', str(stops[0])))
  assert not os.path.exists(os.path.join(workdir, 'samples', 'final.npz'))

  # 3) Digits draw each global batch from one order, so even one process (4 devices) may finish the run.
  _run(1, 4, workdir)
  _assert_same_run(workdir, reference)


def test_a_changed_process_count_is_refused_only_where_the_data_would_differ(tmp_path, monkeypatch):
  checkpointer = checkpoints.Checkpointer(str(tmp_path), every=4, keep=2)
  path = os.path.join(checkpointer.directory, checkpoints.PROCESSES_FILE)
  # A workdir from before the count was recorded: nothing to compare, the count is recorded.
  checkpointer.check_process_count('cifar10', order_depends_on_count=True)
  assert open(path).read().replace(' ', '').replace('\n', '') == '{"process_count":1}'
  with open(path, 'w') as f:
    f.write('{"process_count": 2}')
  monkeypatch.setattr(checkpointer, 'latest_step', lambda: 8)
  with pytest.raises(checkpoints.CheckpointError, match=r'trained by 2 processes, this run has 1.*Resume with 2'):
    checkpointer.check_process_count('cifar10', order_depends_on_count=True)
  checkpointer.check_process_count('digits', order_depends_on_count=False)
  assert '"process_count": 1' in open(path).read()
  checkpointer.close()


@pytest.mark.parametrize('flags, expected', [
    (('--num_processes=0',), 'error: --num_processes=0 must be at least 1.'),
    (('--num_processes=2', '--process_id=2'), 'error: --process_id=2 must lie in [0, --num_processes=2).'),
])
def test_impossible_coordinates_are_one_line(tmp_path, flags, expected):
  result = subprocess.run([sys.executable, os.path.join(REPO, 'main.py'), '--config=tests/tiny_cli_config.py:spdm',
                           f'--workdir={tmp_path}', *flags], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1 and result.stderr.strip().splitlines()[-1] == expected, result.stderr[-2000:]

"""scripts/launch_local.py with a stand-in for main.py: coordinates and devices per process, prefixed output, and a
failing process stopping the others (test_multi_process runs it with the real main.py)."""

import os
import re
import signal
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(REPO, 'scripts', 'launch_local.py')

# Prints what it was given; process 1 then exits with the status given as its first argument, the others wait.
_STAND_IN = '''
import os, sys, time
args = dict(a[2:].split('=', 1) for a in sys.argv[1:] if a.startswith('--') and '=' in a)
print('argv', ' '.join(sys.argv[1:]), flush=True)
print('xla', os.environ['XLA_FLAGS'], 'platforms', os.environ['JAX_PLATFORMS'], flush=True)
if args['status'] == 'term':  # like main.py: SIGTERM -> save, exit 143
  import signal
  signal.signal(signal.SIGTERM, lambda *_: (print('got SIGTERM', flush=True), sys.exit(143)))
  print('ready', flush=True)
  time.sleep(600)
if args['process_id'] == '1':
  sys.exit(int(args['status']))
if args['status'] != '0':
  time.sleep(600)
'''


def _command(tmp_path, status, *extra: str) -> tuple[list[str], dict[str, str]]:
  stand_in = tmp_path / 'stand_in.py'
  stand_in.write_text(_STAND_IN)
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=9 --xla_dump_to=/tmp/x')
  env.pop('JAX_PLATFORMS', None)
  return [sys.executable, LAUNCHER, '--processes=3', '--devices_per_process=2', f'--main={stand_in}',
          f'--status={status}', *extra], env


def _launch(tmp_path, status: int, *extra: str) -> subprocess.CompletedProcess:
  command, env = _command(tmp_path, status, *extra)
  return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_each_process_gets_its_coordinates_devices_and_a_prefix(tmp_path):
  result = _launch(tmp_path, 0, '--config=c.py')
  assert result.returncode == 0, result.stdout + result.stderr
  lines = result.stdout.splitlines()
  addresses = set()
  for index in range(3):
    (argv,) = [line for line in lines if line.startswith(f'[p{index}] argv')]
    assert f'--num_processes=3 --process_id={index}' in argv and '--status=0 --config=c.py' in argv
    addresses.add(re.search(r'--coordinator_address=(127\.0\.0\.1:\d+)', argv).group(1))
    (xla,) = [line for line in lines if line.startswith(f'[p{index}] xla')]
    # The forced count replaces the one in the environment; other XLA flags stay.
    assert xla == f'[p{index}] xla --xla_dump_to=/tmp/x --xla_force_host_platform_device_count=2 platforms cpu'
  assert len(addresses) == 1


def test_a_failing_process_stops_the_others_and_sets_the_exit_status(tmp_path):
  result = _launch(tmp_path, 3)
  assert result.returncode == 3
  assert 'process 1 exited with status 3; stopping the others' in result.stdout
  pids = [int(pid) for pid in re.findall(r'^\[launch\] process \d: pid (\d+)', result.stdout, re.M)]
  assert len(pids) == 3
  for pid in pids:  # all reaped by the launcher: none is left running
    with pytest.raises(ProcessLookupError):
      os.kill(pid, 0)


@pytest.mark.parametrize('flag', ['--process_id=0', '--num_processes=2', '--coordinator_address=h:1'])
def test_coordinates_are_the_launchers_to_set(tmp_path, flag):
  result = _launch(tmp_path, 0, flag)
  assert result.returncode == 2 and f'{flag.split("=")[0]} is set by the launcher' in result.stderr


def test_sigterm_to_the_launcher_reaches_every_process_and_its_status_is_kept(tmp_path):
  command, env = _command(tmp_path, 'term')
  launcher = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
  lines = []
  while sum(line.endswith('] ready\n') for line in lines) < 3:
    lines.append(launcher.stdout.readline())
    assert lines[-1], ''.join(lines)  # the launcher ended before its processes were ready
  launcher.send_signal(signal.SIGTERM)
  rest, _ = launcher.communicate(timeout=60)
  assert launcher.returncode == 143
  assert sorted(line.split()[0] for line in rest.splitlines() if line.endswith('got SIGTERM')) == ['[p0]', '[p1]',
                                                                                                   '[p2]']

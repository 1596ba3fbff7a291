"""Starts a run of several processes on this machine, each with its own forced CPU devices: a multi-host run in
miniature, for tests and for trying --distributed without a cluster.

  python scripts/launch_local.py --processes=2 --devices_per_process=2 --config=configs/digits_spdm.py --workdir=DIR

Every argument the launcher does not know goes to each main.py (with --coordinator_address, --num_processes and
--process_id added). Output lines are prefixed [pK]. If a process fails, the others are stopped and the launcher exits
with the failed process's status (143 after a preemption, as main.py); SIGTERM / SIGINT to the launcher is passed on.
"""

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Seconds a process gets to stop on SIGTERM after another one failed, before SIGKILL: a process blocked in a collective
# with a dead peer never stops by itself.
_GRACE_SECONDS = 10.0


def free_port() -> int:
  """A TCP port on localhost that nothing listens on right now (the coordinator binds it moments later)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
    probe.bind(('127.0.0.1', 0))
    return probe.getsockname()[1]


def child_env(devices_per_process: int) -> dict[str, str]:
  """This environment with M forced host devices (replacing any forced count) and JAX on the CPU unless set."""
  env = dict(os.environ)
  xla_flags = re.sub(r'--xla_force_host_platform_device_count=\S+', '', env.get('XLA_FLAGS', '')).split()
  env['XLA_FLAGS'] = ' '.join([*xla_flags, f'--xla_force_host_platform_device_count={devices_per_process}'])
  env.setdefault('JAX_PLATFORMS', 'cpu')
  env['PYTHONUNBUFFERED'] = '1'
  return env


def _stream(index: int, process: subprocess.Popen, out_lock: threading.Lock) -> None:
  for line in process.stdout:
    with out_lock:
      sys.stdout.write(f'[p{index}] {line}')
      sys.stdout.flush()


def launch(processes: int, devices_per_process: int, main_args: list[str], main: str, port: int | None = None) -> int:
  """Runs `processes` copies of main.py joined into one run; returns the exit status (0, or the first failure's)."""
  address = f'127.0.0.1:{port or free_port()}'
  env = child_env(devices_per_process)
  children: list[subprocess.Popen] = []
  for index in range(processes):
    command = [sys.executable, main, *main_args, f'--coordinator_address={address}', f'--num_processes={processes}',
               f'--process_id={index}']
    # A session of its own: Ctrl-C reaches the processes once, passed on by the launcher, not twice via the terminal.
    children.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     bufsize=1, start_new_session=True))
    print(f'[launch] process {index}: pid {children[-1].pid}', flush=True)
  out_lock = threading.Lock()
  readers = [threading.Thread(target=_stream, args=(i, child, out_lock), daemon=True)
             for i, child in enumerate(children)]
  for reader in readers:
    reader.start()

  def forward(signum, frame):
    del frame
    for child in children:
      if child.poll() is None:
        child.send_signal(signum)

  previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
  status = 0
  try:
    remaining = set(range(processes))
    while remaining:
      for index in sorted(remaining):
        try:
          code = children[index].wait(timeout=0.2)
        except subprocess.TimeoutExpired:
          continue
        remaining.discard(index)
        if code != 0 and status == 0:
          status = code if code > 0 else 128 - code  # killed by signal N: the shell's 128 + N
          print(f'[launch] process {index} exited with status {code}; stopping the others', flush=True)
          # A preempted process saved with the others: they are stopping by themselves, give them the time.
          _stop(children, wait_first=code == 143)
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
    _stop(children)
    for reader in readers:
      reader.join(timeout=5)
  return status


def _stop(children: list[subprocess.Popen], wait_first: bool = False) -> None:
  """SIGTERM to every live child (after a grace period if wait_first), SIGKILL to those still alive after one."""
  if wait_first:
    for child in children:
      try:
        child.wait(timeout=_GRACE_SECONDS)
      except subprocess.TimeoutExpired:
        pass
  live = [child for child in children if child.poll() is None]
  for child in live:
    child.terminate()
  for child in live:
    try:
      child.wait(timeout=_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
      child.kill()
      child.wait()


def main(argv: list[str] | None = None) -> int:
  # allow_abbrev=False: main.py's --process_id must not be taken for an abbreviation of --processes.
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                   allow_abbrev=False)
  parser.add_argument('--processes', type=int, default=2, help='number of processes (N)')
  parser.add_argument('--devices_per_process', type=int, default=1, help='forced CPU devices per process (M)')
  parser.add_argument('--port', type=int, default=None, help='coordinator port on localhost (default: a free one)')
  parser.add_argument('--main', default=os.path.join(REPO, 'main.py'), help='the script each process runs')
  args, main_args = parser.parse_known_args(argv)
  if args.processes < 1 or args.devices_per_process < 1:
    parser.error(f'--processes={args.processes} and --devices_per_process={args.devices_per_process} must be >= 1.')
  for flag in ('--coordinator_address', '--num_processes', '--process_id'):
    if any(arg == flag or arg.startswith(flag + '=') for arg in main_args):
      parser.error(f'{flag} is set by the launcher for each process: leave it out.')
  return launch(args.processes, args.devices_per_process, main_args, args.main, args.port)


if __name__ == '__main__':
  sys.exit(main())

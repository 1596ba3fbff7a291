"""One run per workdir: an exclusive lock on <workdir>/run.lock, held for the whole run.

The kernel releases a flock when its process ends in any way (exit, crash, kill -9), so a lock left by a dead run
is never in the way and needs no clean-up. The file records who holds it (host, pid, mode, start time) so a second
run can name the first. On network filesystems without flock support the lock is skipped with a warning.
"""

import datetime
import errno
import fcntl
import json
import os
import socket

from absl import logging

LOCK_FILE = 'run.lock'


class WorkdirBusyError(RuntimeError):
  """Another live run holds the workdir; the message names it."""


class WorkdirLock:
  """Context manager: `with WorkdirLock(workdir, mode):` holds the workdir or raises WorkdirBusyError at once."""

  def __init__(self, workdir: str, mode: str, enabled: bool = True):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_FILE)
    self.mode = mode
    self.enabled = enabled
    self._fd = None

  def __enter__(self) -> 'WorkdirLock':
    if not self.enabled:
      return self
    try:
      os.makedirs(self.workdir, exist_ok=True)
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise ValueError(f'--workdir={self.workdir} cannot be used ({e.strerror or e}): pass a writable directory.'
                       ) from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno in (errno.EAGAIN, errno.EACCES):
        raise WorkdirBusyError(f'{self.workdir} is in use by {self._holder()}: wait for that run to '
                               'end or stop it, or use another --workdir.') from None
      logging.warning('Cannot lock %s (%s); running without the one-run-per-workdir guard.', self.path, e)
      return self
    holder = dict(host=socket.gethostname(), pid=os.getpid(), mode=self.mode,
                  since=datetime.datetime.now().isoformat(timespec='seconds'))
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(holder).encode())
    self._fd = fd
    return self

  def _holder(self) -> str:
    try:
      with open(self.path) as f:
        holder = json.load(f)
      return f'a --mode={holder["mode"]} run (pid {holder["pid"]} on {holder["host"]}, since {holder["since"]})'
    except (OSError, ValueError, KeyError):
      return 'another run'

  def __exit__(self, *exc_info) -> None:
    if self._fd is not None:
      # The file stays (unlinking it would race with a run about to lock it); the lock goes with the descriptor.
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

"""Transparent huge pages for XLA:CPU's buffers: the entry points restart themselves with glibc's `hugetlb` tunable.

XLA:CPU allocates a program's temporary buffer afresh for every run (1.6 GB for the reference CIFAR-10 train step at
batch 32) and glibc maps it with 4 KiB pages: every step took ~420,000 page faults, ~1 s of kernel time on two
cores, and the big arrays missed the TLB. With GLIBC_TUNABLES=glibc.malloc.hugetlb=1, glibc (2.35 and newer) asks
Linux for transparent huge pages, which the kernel's default THP mode ('madvise') grants: ~2,000 faults per step
and a faster step (README: Memory and speed). glibc reads its tunables only when a process starts, so an entry
point (main.py, the pdm-jax command, scripts/benchmark.py) calls `restart_with_huge_pages()` first; nothing has
run yet, so nothing is lost. `PDM_JAX_HUGE_PAGES=0` in the environment turns it off.
"""

import os
import platform
import sys

_TUNABLE = 'glibc.malloc.hugetlb'
THP_MODE_FILE = '/sys/kernel/mm/transparent_hugepage/enabled'


def _glibc_at_least(major: int, minor: int) -> bool:
  library, version = platform.libc_ver()
  if library != 'glibc':
    return False
  try:
    return tuple(int(part) for part in version.split('.')[:2]) >= (major, minor)
  except ValueError:
    return False


def _thp_mode() -> str | None:
  """The kernel's transparent-huge-page mode ('always', 'madvise' or 'never'), None if it has none."""
  try:
    with open(THP_MODE_FILE) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find('['), text.find(']')
  return text[start + 1:end] if 0 <= start < end else None


def why_not_restart() -> str | None:
  """None if restart_with_huge_pages() would restart this process, else why not (for logs and tests)."""
  if os.environ.get('PDM_JAX_HUGE_PAGES', '1') == '0':
    return 'PDM_JAX_HUGE_PAGES=0'
  if _TUNABLE in os.environ.get('GLIBC_TUNABLES', ''):
    return f'GLIBC_TUNABLES already sets {_TUNABLE}'
  if not sys.platform.startswith('linux') or not _glibc_at_least(2, 35):
    return f'not Linux with glibc 2.35 or newer ({sys.platform}, {platform.libc_ver()})'
  mode = _thp_mode()
  if mode != 'madvise':  # 'always' needs no request; 'never' or none grants none
    return f'transparent huge page mode is {mode}'
  if not sys.executable or not getattr(sys, 'orig_argv', None):
    return 'the interpreter\'s command line is unknown'
  return None


def active() -> bool:
  """Whether glibc in this process asks for (or the kernel always gives) transparent huge pages."""
  mode = _thp_mode()
  return mode == 'always' or (mode == 'madvise' and f'{_TUNABLE}=1' in os.environ.get('GLIBC_TUNABLES', '')
                              and _glibc_at_least(2, 35))


def restart_with_huge_pages() -> None:
  """Replaces this process by the same command with GLIBC_TUNABLES=...:glibc.malloc.hugetlb=1, where that helps
  (see why_not_restart); returns without doing anything otherwise. Call it before any other work."""
  if why_not_restart() is not None:
    return
  tunables = [part for part in os.environ.get('GLIBC_TUNABLES', '').split(':') if part]
  env = dict(os.environ, GLIBC_TUNABLES=':'.join([*tunables, f'{_TUNABLE}=1']))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, env)

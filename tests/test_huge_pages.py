"""Transparent huge pages (pdm_jax/huge_pages.py): an entry point restarts itself with glibc's hugetlb tunable,
keeping its arguments and other tunables, and glibc's large allocations then are huge pages; the opt-out and the
cases where it must not restart."""

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from pdm_jax import huge_pages

# A program that restarts itself, then mallocs and touches 256 MiB through libc (not NumPy: NumPy asks for huge pages
# itself) and reports its arguments, its tunables and how much of its memory is huge pages.
_PROBE = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from pdm_jax import huge_pages
    huge_pages.restart_with_huge_pages()
    import ctypes, os
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    size = 256 << 20
    ctypes.memset(libc.malloc(size), 1, size)
    with open('/proc/self/smaps_rollup') as f:
      huge_kib = next(int(line.split()[1]) for line in f if line.startswith('AnonHugePages'))
    print(sys.argv[1:], os.environ.get('GLIBC_TUNABLES'), huge_pages.active(), huge_kib >= (128 << 10))
""")


def _probe(tmp_path: pathlib.Path, env: dict[str, str]) -> str:
  script = tmp_path / 'probe.py'
  script.write_text(_PROBE.format(root=str(pathlib.Path(__file__).parent.parent)))
  base = {k: v for k, v in os.environ.items() if k not in ('GLIBC_TUNABLES', 'PDM_JAX_HUGE_PAGES')}
  result = subprocess.run([sys.executable, str(script), 'one', 'two words'], env={**base, **env},
                          capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  return result.stdout.strip()


def _restarts_here() -> bool:
  return (huge_pages._thp_mode() == 'madvise' and sys.platform.startswith('linux')  # pylint: disable=protected-access
          and huge_pages._glibc_at_least(2, 35))  # pylint: disable=protected-access


@pytest.mark.skipif(not _restarts_here(), reason='needs Linux, glibc >= 2.35 and THP mode madvise')
def test_restart_keeps_arguments_and_tunables_and_large_allocations_get_huge_pages(tmp_path):
  out = _probe(tmp_path, {'GLIBC_TUNABLES': 'glibc.malloc.check=0'})
  assert out == "['one', 'two words'] glibc.malloc.check=0:glibc.malloc.hugetlb=1 True True"


@pytest.mark.skipif(not _restarts_here(), reason='needs Linux, glibc >= 2.35 and THP mode madvise')
def test_opting_out_keeps_small_pages(tmp_path):
  assert _probe(tmp_path, {'PDM_JAX_HUGE_PAGES': '0'}) == "['one', 'two words'] None False False"


def test_no_restart_when_disabled_already_set_or_unavailable(monkeypatch):
  monkeypatch.delenv('GLIBC_TUNABLES', raising=False)
  monkeypatch.setenv('PDM_JAX_HUGE_PAGES', '0')
  assert huge_pages.why_not_restart() == 'PDM_JAX_HUGE_PAGES=0'
  monkeypatch.delenv('PDM_JAX_HUGE_PAGES')
  monkeypatch.setenv('GLIBC_TUNABLES', 'glibc.malloc.hugetlb=0')  # the user's own choice wins
  assert huge_pages.why_not_restart() == 'GLIBC_TUNABLES already sets glibc.malloc.hugetlb'
  monkeypatch.delenv('GLIBC_TUNABLES')
  monkeypatch.setattr(huge_pages, 'THP_MODE_FILE', '/nonexistent/thp')
  if huge_pages._glibc_at_least(2, 35):  # pylint: disable=protected-access
    assert huge_pages.why_not_restart() == 'transparent huge page mode is None'
  monkeypatch.setattr(huge_pages.os, 'execve', lambda *args: pytest.fail('restarted'))
  huge_pages.restart_with_huge_pages()  # returns: nothing to gain

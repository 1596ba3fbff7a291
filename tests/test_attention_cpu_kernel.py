"""The fused CPU attention kernel (model.attention_impl='cpu_fused'): outputs and gradients against the plain formula
(fp32, 1e-5) over head sizes compiled in and not, ragged key counts and query blocks; its memory; its build cache;
and what happens where it cannot be built."""

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdm_jax.kernels import attention_cpu
from pdm_jax.kernels import native_build
from pdm_jax.models import attention
from tests.test_attention import plain_attention

pytestmark = pytest.mark.skipif(jax.default_backend() != 'cpu', reason='a CPU kernel')


def _inputs(batch, query_len, key_len, heads, head_dim, seed=0):
  rng = np.random.default_rng(seed)
  make = lambda length, scale=1.0: jnp.asarray(scale * rng.standard_normal((batch, length, heads, head_dim)),
                                               jnp.float32)
  # Queries scaled up so that the softmax is peaked, as trained attention is, not nearly uniform.
  return make(query_len, 3.0), make(key_len), make(key_len), make(query_len)


@pytest.mark.parametrize('batch,query_len,key_len,heads,head_dim', [
    (2, 64, 64, 4, 8),  # the reference's head size, compiled in; keys a whole number of 16-key tiles
    (1, 17, 33, 3, 8),  # a ragged last tile, fewer queries than keys
    (2, 16, 16, 2, 16),  # compiled in
    (1, 40, 24, 2, 32),  # compiled in
    (1, 50, 7, 2, 5),  # a head size read at run time, fewer keys than one tile
    (1, 9, 40, 1, 64),  # run time, more accumulators than registers
    (1, 300, 200, 2, 8),  # more queries than one backward block (64 here)
])
def test_outputs_and_gradients_match_the_plain_formula(batch, query_len, key_len, heads, head_dim):
  q, k, v, weights = _inputs(batch, query_len, key_len, heads, head_dim)
  loss = lambda fn: (lambda q, k, v: jnp.sum(fn(q, k, v) * weights))
  fused = jax.jit(attention_cpu.attention)
  np.testing.assert_allclose(fused(q, k, v), plain_attention(q, k, v), rtol=1e-5, atol=1e-5)
  got = jax.jit(jax.grad(loss(attention_cpu.attention), argnums=(0, 1, 2)))(q, k, v)
  want = jax.grad(loss(plain_attention), argnums=(0, 1, 2))(q, k, v)
  for name, g, w in zip('qkv', got, want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(w))), err_msg=f'd{name}')


def test_extreme_logits_stay_finite_and_exact():
  # Logits of +-1e3: exp must neither overflow (the row max is subtracted) nor turn -inf into NaN.
  q, k, v, _ = _inputs(1, 20, 20, 2, 8)
  q = q * 100.0
  out = attention_cpu.attention(q, k, v)
  assert np.isfinite(np.asarray(out)).all()
  np.testing.assert_allclose(out, plain_attention(q, k, v), rtol=1e-5, atol=1e-5)


def test_other_dtypes_are_cast_at_the_boundary_and_vmap_runs_pairs_in_turn():
  q, k, v, _ = _inputs(2, 16, 16, 2, 8)
  half = lambda t: t.astype(jnp.bfloat16)
  out = attention_cpu.attention(half(q), half(k), half(v))
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), plain_attention(*(half(t).astype(jnp.float32)
                                                                            for t in (q, k, v))), atol=2e-2)
  batched = jax.vmap(attention_cpu.attention)(q[None], k[None], v[None])[0]
  np.testing.assert_allclose(batched, attention_cpu.attention(q, k, v), rtol=1e-6, atol=1e-6)


def test_memory_grows_with_tokens_not_tokens_squared():
  shape = jax.ShapeDtypeStruct((1, 4096, 2, 8), jnp.float32)
  fn = lambda q, k, v: jnp.sum(attention.dot_product_attention(q, k, v, impl='cpu_fused')**2)
  compiled = jax.jit(jax.grad(fn, argnums=(0, 1, 2))).lower(shape, shape, shape).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  # The full logits would be 128 MiB; the kernel's residuals are a few (tokens x heads x D) arrays.
  assert temp < 16 * 4096 * 2 * 8 * 4, temp


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True, text=True,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu', **env}, timeout=300, check=False,
                        cwd=pathlib.Path(__file__).parent.parent)


def test_the_build_is_cached_and_reused(tmp_path):
  # A compiler that logs each call, so the test sees whether the second process built again.
  calls = tmp_path / 'calls'
  logging_compiler = tmp_path / 'logging-c++'
  logging_compiler.write_text(f'#!/bin/sh\necho built >> {calls}\nexec g++ "$@"\n')
  logging_compiler.chmod(0o755)
  env = {'PDM_JAX_KERNEL_CACHE': str(tmp_path / 'cache'), 'CXX': str(logging_compiler)}
  code = """
      from pdm_jax.kernels import attention_cpu
      assert attention_cpu.unavailable_reason() is None
  """
  for _ in range(2):
    result = _run(code, env)
    assert result.returncode == 0, result.stderr[-2000:]
  assert calls.read_text().split() == ['built']
  assert len(list((tmp_path / 'cache').glob('attention_cpu-*.so'))) == 1


def test_without_a_compiler_auto_falls_back_and_cpu_fused_says_why(tmp_path):
  code = """
      import jax.numpy as jnp
      from pdm_jax.models import attention
      q = jnp.ones((1, 16, 2, 8))
      print('auto ->', attention.resolve_impl('auto', q.shape, 16, q.dtype))
      try:
        attention.dot_product_attention(q, q, q, impl='cpu_fused')
      except ValueError as e:
        print('error:', e)
  """
  result = _run(code, {'PDM_JAX_KERNEL_CACHE': str(tmp_path), 'CXX': '/nonexistent/c++'})
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'auto -> chunked' in result.stdout
  assert ("error: model.attention_impl=cpu_fused is unavailable: no C++ compiler '/nonexistent/c++' to build "
          "attention_cpu.cc: install g++ (or set CXX); or use auto or chunked.") in result.stdout
  assert 'Fused CPU attention unavailable' in result.stderr  # one warning, not silence
  assert not list(tmp_path.glob('*.so'))


def test_a_failing_build_names_the_compiler_error(tmp_path):
  fake = tmp_path / 'fake-c++'
  fake.write_text('#!/bin/sh\necho "fatal error: xla/ffi/api/ffi.h: No such file or directory" >&2\nexit 1\n')
  fake.chmod(0o755)
  code = """
      from pdm_jax.kernels import attention_cpu
      print(attention_cpu.unavailable_reason())
  """
  result = _run(code, {'PDM_JAX_KERNEL_CACHE': str(tmp_path / 'cache'), 'CXX': str(fake)})
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == (f'{fake} failed to build attention_cpu.cc: fatal error: xla/ffi/api/ffi.h: No '
                                   'such file or directory')


def test_auto_keeps_chunked_attention_on_several_devices():
  # XLA cannot split the kernel's batch across devices (it would gather it): 'auto' keeps the sharded XLA path.
  code = """
      import jax, jax.numpy as jnp
      from pdm_jax.models import attention
      assert jax.device_count() == 2
      print('auto ->', attention.resolve_impl('auto', (2, 16, 2, 8), 16, jnp.float32))
  """
  result = _run(code, {'XLA_FLAGS': '--xla_force_host_platform_device_count=2'})
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'auto -> chunked' in result.stdout


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
  monkeypatch.setenv('PDM_JAX_KERNEL_CACHE', str(tmp_path / 'k'))
  assert native_build.cache_dir() == tmp_path / 'k'
  monkeypatch.delenv('PDM_JAX_KERNEL_CACHE')
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  assert native_build.cache_dir() == tmp_path / 'xdg' / 'pdm_jax' / 'kernels'

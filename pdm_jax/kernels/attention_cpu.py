"""Fused attention for XLA:CPU: model.attention_impl='cpu_fused' (and what 'auto' takes on one CPU device).

The kernel (attention_cpu.cc) computes softmax(q k^T / sqrt(D)) v for every (image, head) pair on XLA's thread
pool without writing the (queries x keys) weights to memory; its backward recomputes them from the forward's log
normalisers, so memory grows with tokens, not tokens^2, like the 'chunked' path. Float32 inside; other dtypes are
cast at the boundary.
"""

import jax
import jax.numpy as jnp
import numpy as np

from pdm_jax.kernels import native_build

_FORWARD, _BACKWARD = 'pdm_attention_cpu_forward', 'pdm_attention_cpu_backward'


def unavailable_reason() -> str | None:
  """None when the kernel is built and registered in this process (building it on the first call), else a one-line
  reason. A failure is remembered: the build is not retried in this process."""
  return native_build.register('attention_cpu.cc', ((_FORWARD, 'PdmAttentionForward'),
                                                   (_BACKWARD, 'PdmAttentionBackward')))


def attention(query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
  """(B, Lq, N, D) queries, (B, Lk, N, D) keys and values -> (B, Lq, N, D) in the queries' dtype.

  Raises a one-line ValueError if the kernel cannot be built here.
  """
  reason = unavailable_reason()
  if reason is not None:
    raise ValueError(f'model.attention_impl=cpu_fused is unavailable: {reason}; or use auto or chunked.')
  f32 = lambda t: t.astype(jnp.float32)
  return _fused(f32(query), f32(key), f32(value)).astype(query.dtype)


def _scale(query):
  return np.float32(query.shape[-1] ** -0.5)


def _forward(query, key, value):
  batch, query_len, heads, _ = query.shape
  shapes = (jax.ShapeDtypeStruct(query.shape, jnp.float32),
            jax.ShapeDtypeStruct((batch, heads, query_len), jnp.float32))
  out, log_sum_exp = jax.ffi.ffi_call(_FORWARD, shapes, vmap_method='sequential')(query, key, value,
                                                                                   scale=_scale(query))
  return out, (query, key, value, out, log_sum_exp)


def _backward(residuals, d_out):
  query, key, value, out, log_sum_exp = residuals
  shapes = tuple(jax.ShapeDtypeStruct(t.shape, jnp.float32) for t in (query, key, value))
  return tuple(jax.ffi.ffi_call(_BACKWARD, shapes, vmap_method='sequential')(
      query, key, value, out, log_sum_exp, d_out, scale=_scale(query)))


@jax.custom_vjp
def _fused(query, key, value):
  return _forward(query, key, value)[0]


_fused.defvjp(_forward, _backward)

"""The kernel gradient of a stride-1 convolution on XLA:CPU (conv_weight_grad_cpu.cc), where XLA's own is slow.

pdm_jax/models/convolution.py's backward pass calls `weight_grad` when `usable` says the kernel applies (float32,
one CPU device, output channels a multiple of 16, the kernel built here); otherwise it keeps its XLA formula.
`PDM_JAX_CPU_CONV_KERNEL=0` in the environment, or tracing inside `conv_route.xla_route()`, keeps the XLA formula.
"""

import jax
import jax.numpy as jnp

from pdm_jax.kernels import conv_route
from pdm_jax.kernels import native_build

_TARGET = 'pdm_conv_weight_grad'


def unavailable_reason() -> str | None:
  """None when the kernel is built and registered in this process (building it on the first call), else a one-line
  reason."""
  return native_build.register('conv_weight_grad_cpu.cc', ((_TARGET, 'PdmConvWeightGrad'),))


def usable(x: jax.Array, dy: jax.Array) -> bool:
  """Whether weight_grad can compute this gradient here and is wanted."""
  if not conv_route.kernels_wanted():
    return False
  return x.dtype == dy.dtype == jnp.float32 and dy.shape[-1] % 16 == 0 and unavailable_reason() is None


def weight_grad(x: jax.Array, dy: jax.Array, kernel_size: tuple[int, int], top: int, left: int) -> jax.Array:
  """d(loss)/d(kernel) of y = conv2d(x, kernel, ((top, .), (left, .))): x (B, H, W, C), dy (B, H', W', O) ->
  (kh, kw, C, O). Not differentiable itself (no second-order gradients through it). Raises a one-line ValueError
  if the kernel cannot be built here."""
  reason = unavailable_reason()
  if reason is not None:
    raise ValueError(f'the C++ convolution kernel gradient is unavailable: {reason}')
  kh, kw = kernel_size
  out = jax.ShapeDtypeStruct((kh, kw, x.shape[-1], dy.shape[-1]), jnp.float32)
  return jax.ffi.ffi_call(_TARGET, out, vmap_method='sequential')(x, dy, kh=kh, kw=kw, top=top, left=left)

"""3x3 'same' convolutions on XLA:CPU by Winograd's F(4x4, 3x3) (winograd_cpu.cc): 36 products per 4x4 block of
outputs and channel pair instead of 144, for the convolution, its input gradient and its kernel gradient.

pdm_jax/models/convolution.py uses `conv` and `weight_grad` when `usable` says the kernel applies (float32, one CPU
device, images of at least 8 x 8, input channels a multiple of 16 and output channels of 32, the kernel built
here). `PDM_JAX_CPU_CONV_KERNEL=0` in the environment, or tracing inside `conv_route.xla_route()`, keeps XLA's
convolutions. The transforms round differently from a direct convolution: against float64 sums, the largest error
is 0.5-1.3e-5 of the output's largest value, 9-24x a direct float32 convolution's.
"""

import jax
import jax.numpy as jnp

from pdm_jax.kernels import conv_route
from pdm_jax.kernels import native_build

_TARGET, _WEIGHT_GRAD = 'pdm_winograd_conv', 'pdm_winograd_weight_grad'


def unavailable_reason() -> str | None:
  """None when the kernel is built and registered in this process (building it on the first call), else a one-line
  reason."""
  return native_build.register('winograd_cpu.cc', ((_TARGET, 'PdmWinogradConv'),
                                                   (_WEIGHT_GRAD, 'PdmWinogradWeightGrad')))


def _require_built() -> None:
  reason = unavailable_reason()
  if reason is not None:
    raise ValueError(f'the C++ Winograd convolution is unavailable: {reason}')


def usable(x: jax.Array, kernel: jax.Array, padding, transposed: bool = False) -> bool:
  """Whether conv can compute this convolution here and is wanted: conv2d(x, kernel, padding), or with
  `transposed` the input gradient of a convolution with `kernel`."""
  if not conv_route.kernels_wanted():
    return False
  out_channels = kernel.shape[2] if transposed else kernel.shape[3]
  # An image under 8 x 8 is at most four 4 x 4 tiles: too little work per kernel call, and XLA was as fast there.
  return (kernel.shape[:2] == (3, 3) and min(x.shape[1:3]) >= 8 and tuple(map(tuple, padding)) == ((1, 1), (1, 1))
          and x.dtype == kernel.dtype == jnp.float32 and x.shape[-1] % 16 == 0 and out_channels % 32 == 0
          and unavailable_reason() is None)


def conv(x: jax.Array, kernel: jax.Array, transposed: bool = False) -> jax.Array:
  """conv2d(x, kernel, ((1, 1), (1, 1))) for a (3, 3, C, O) kernel: (B, H, W, C) -> (B, H, W, O). With
  `transposed`, the input gradient of a 'same' convolution with a (3, 3, O, C) kernel: x plays dy, the result dx.
  Not differentiable itself (convolution.py defines the gradients). Raises a one-line ValueError if the kernel
  cannot be built here."""
  _require_built()
  out = jax.ShapeDtypeStruct((*x.shape[:3], kernel.shape[2] if transposed else kernel.shape[3]), jnp.float32)
  return jax.ffi.ffi_call(_TARGET, out, vmap_method='sequential')(x, kernel, transposed=bool(transposed))


def weight_grad(x: jax.Array, dy: jax.Array) -> jax.Array:
  """d(loss)/d(kernel) of y = conv(x, kernel) for a 3x3 kernel and 'same' padding: x (B, H, W, C), dy (B, H, W, O)
  -> (3, 3, C, O). Not differentiable itself. Raises a one-line ValueError if the kernel cannot be built here."""
  _require_built()
  out = jax.ShapeDtypeStruct((3, 3, x.shape[-1], dy.shape[-1]), jnp.float32)
  return jax.ffi.ffi_call(_WEIGHT_GRAD, out, vmap_method='sequential')(x, dy)

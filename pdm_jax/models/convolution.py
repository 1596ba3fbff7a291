"""The model's stride-1 convolution, with a backward pass that XLA:CPU runs as library convolutions everywhere.

XLA:CPU hands a convolution to its Eigen kernels only in the canonical form (NHWC input, HWIO kernel, NHWC output);
autodiff's two backward convolutions are not in it, and XLA rewrites them into it only outside loops. Inside a
`lax.scan` (train.grad_accum_steps > 1) they were compiled as naive loops: the gradient of two 3x3 convolutions
(32 x 32 x 32 x 128) took 12 s instead of 0.3 s. Here the backward pass is written out as two canonical
convolutions, so every convolution of the step is a library one, in loops or not; the numbers are the same.

On one CPU device, C++ kernels take over where they apply: 3x3 'same' convolutions (the UNet's), their input and
kernel gradients run Winograd's F(4x4, 3x3) (pdm_jax/kernels/winograd_cpu.cc: a quarter of the multiplications;
the reference's train step 1.4-1.5x faster), and other kernel gradients a direct kernel
(pdm_jax/kernels/conv_weight_grad_cpu.cc, 1.1-1.5x XLA's route alone). `PDM_JAX_CPU_CONV_KERNEL=0` in the
environment keeps XLA's convolutions everywhere, e.g. to compare.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from pdm_jax.kernels import conv_weight_grad_cpu
from pdm_jax.kernels import winograd_cpu

Padding = tuple[tuple[int, int], tuple[int, int]]
_NHWC = ('NHWC', 'HWIO', 'NHWC')


def _canonical_conv(x: jax.Array, kernel: jax.Array, padding: Padding) -> jax.Array:
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x, kernel, padding):
  return _conv_forward(x, kernel, padding)[0]


def _conv_forward(x, kernel, padding):
  if winograd_cpu.usable(x, kernel, padding):
    return winograd_cpu.conv(x, kernel), (x, kernel)
  return _canonical_conv(x, kernel, padding), (x, kernel)


def _conv_backward(padding, residuals, dy):
  x, kernel = residuals
  kh, kw = kernel.shape[:2]
  (top, bottom), (left, right) = padding
  # Input gradient: dy against the spatially flipped kernel, input and output channels swapped, the padding
  # that restores x's size.
  dx_padding = ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right))
  if winograd_cpu.usable(dy, kernel, dx_padding, transposed=True):
    dx = winograd_cpu.conv(dy, kernel, transposed=True)
  else:
    dx = _canonical_conv(dy, jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2), dx_padding)
  if winograd_cpu.usable(x, kernel, padding):
    dkernel = winograd_cpu.weight_grad(x, dy)
  elif conv_weight_grad_cpu.usable(x, dy):
    dkernel = conv_weight_grad_cpu.weight_grad(x, dy, (kh, kw), top, left)
  else:
    # Kernel gradient: x with its channels as the batch against dy with its images as the input channels; the
    # (kh, kw) output positions are the kernel taps. (Transposing dy instead when it has fewer channels, with x as
    # the kernel, was no faster on the reference's step.)
    dkernel = _canonical_conv(x.transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3), padding).transpose(1, 2, 0, 3)
  return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


_conv.defvjp(_conv_forward, _conv_backward)


def conv2d(x: jax.Array, kernel: jax.Array, padding: Padding | Sequence[Sequence[int]] = ((0, 0), (0, 0))
           ) -> jax.Array:
  """Stride-1 convolution (cross-correlation, as torch and flax): (B, H, W, C), (kh, kw, C, O) -> (B, H', W', O)
  with explicit ((top, bottom), (left, right)) zero padding; H' = H + top + bottom - kh + 1."""
  if x.ndim != 4 or kernel.ndim != 4 or x.shape[-1] != kernel.shape[2]:
    raise ValueError(f'conv2d takes (B, H, W, C) inputs and (kh, kw, C, O) kernels; got {x.shape} and {kernel.shape}.')
  # 1x1 kernels too: forward + backward as convolutions ran 1-7% faster than as matrix products (32 x 32 x 32 x 384
  # -> 128: 98.8 ms vs 102.8 ms).
  return _conv(x, kernel, tuple((int(a), int(b)) for a, b in padding))


class Conv(nn.Module):
  """flax nn.Conv with stride 1 and explicit padding, computed by conv2d: the same parameters ('kernel' (kh, kw, C,
  O), 'bias'), initialisers and dtype handling, so checkpoints and the diffusers weight mapping are unchanged."""
  features: int
  kernel_size: tuple[int, int] = (3, 3)
  padding: Padding = ((1, 1), (1, 1))
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (*self.kernel_size, x.shape[-1], self.features),
                        self.param_dtype)
    y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.padding)
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros_init(), (self.features,), self.param_dtype).astype(self.dtype)
    return y

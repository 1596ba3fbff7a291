"""Stride-2 convolutions computed as stride-1 ones: f_phi's 4x4 (torch Conv2d(k=4, s=2, p=1)) and the UNet's 3x3
downsampling.

A 4x4 window at stride 2 covers exactly 2x2 cells of 2x2 pixels, so the convolution equals a 2x2 stride-1 one on
the space-to-depth rearranged input (4x the channels), with the kernel rearranged to match: the same sums, no extra
FLOPs. XLA:CPU computes the input gradient of a strided convolution as a convolution over a zero-dilated input,
which ran f_phi's forward + backward 3.3x slower (54 ms against 16.5 ms at batch 32, 2.5x at batch 8). A 3x3 stride-2
kernel is the 4x4 one with a zero row and column (7/16 of its products are zeros, but none is on a zero-dilated
input, and in a loop every convolution stays a library one: models/convolution.py). Parameters are those of flax's
nn.Conv (`kernel` (k, k, in, out), `bias`), so checkpoints and weight conversion are unchanged.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from pdm_jax.models import convolution


def conv4x4_stride2(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """(B, H, W, C), (4, 4, C, O) -> (B, floor(H/2), floor(W/2), O): padding 1, stride 2, as torch computes it."""
  batch, height, width, channels = x.shape
  out_channels = kernel.shape[-1]
  # Odd sizes get one more zero row / column so the cells tile the input; the outputs that would read it are cut.
  x = jnp.pad(x, ((0, 0), (1, 1 + height % 2), (1, 1 + width % 2), (0, 0)))
  cells_h, cells_w = x.shape[1] // 2, x.shape[2] // 2
  x = x.reshape(batch, cells_h, 2, cells_w, 2, channels).transpose(0, 1, 3, 2, 4, 5)
  x = x.reshape(batch, cells_h, cells_w, 4 * channels)  # channel index (row in cell, column in cell, channel)
  # Kernel row 2 * cell_row + row_in_cell, likewise for columns.
  kernel = kernel.reshape(2, 2, 2, 2, channels, out_channels).transpose(0, 2, 1, 3, 4, 5)
  kernel = kernel.reshape(2, 2, 4 * channels, out_channels)
  y = convolution.conv2d(x, kernel)
  return y[:, :height // 2, :width // 2]


def conv3x3_stride2(x: jax.Array, kernel: jax.Array, padding: int = 1) -> jax.Array:
  """(B, H, W, C), (3, 3, C, O) -> (B, H/2, W/2, O) for even H, W: torch's Conv2d(k=3, s=2, p=1) (padding=1), or
  the bottom / right padding only of old diffusers checkpoints (padding=0)."""
  if x.shape[1] % 2 or x.shape[2] % 2:
    raise ValueError(f'conv3x3_stride2 takes even heights and widths; got {x.shape[1:3]}.')
  # In the 4x4 window at 2p - 1 (conv4x4_stride2's padding), the 3x3 one of padding=1 takes taps 0-2, that of
  # padding=0 (its window at 2p) taps 1-3.
  pad = ((0, 1), (0, 1)) if padding == 1 else ((1, 0), (1, 0))
  return conv4x4_stride2(x, jnp.pad(kernel, pad + ((0, 0), (0, 0))))


class Conv4x4Stride2(nn.Module):
  """nn.Conv(features, (4, 4), strides=2, padding=1) with its parameters, computed by conv4x4_stride2."""
  features: int
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (4, 4, x.shape[-1], self.features), jnp.float32)
    y = conv4x4_stride2(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros_init(), (self.features,), jnp.float32).astype(self.dtype)
    return y


class Conv3x3Stride2(nn.Module):
  """nn.Conv(features, (3, 3), strides=2) with torch's padding 1 (padding=1) or bottom / right padding (padding=0),
  with its parameters, computed by conv3x3_stride2."""
  features: int
  padding: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (3, 3, x.shape[-1], self.features), jnp.float32)
    y = conv3x3_stride2(x.astype(self.dtype), kernel.astype(self.dtype), self.padding)
    return y + self.param('bias', nn.initializers.zeros_init(), (self.features,), jnp.float32).astype(self.dtype)

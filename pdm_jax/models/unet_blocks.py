"""Building blocks of the diffusers-compatible UNet (NHWC, flax.linen).

Submodule and parameter names follow diffusers' state-dict keys, with `name.<i>` written as `name_<i>`, so that
weights map one to one. `dtype` is the compute dtype (parameters stay float32); `remat` recomputes a block's
activations in the backward pass instead of storing them.
"""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from pdm_jax.models import attention
from pdm_jax.models import convolution
from pdm_jax.models import group_norm as group_norm_lib
from pdm_jax.models import strided_conv


def timestep_embedding(timesteps, dim, flip_sin_to_cos=True, freq_shift=0.0, max_period=10000.0):
  """Sinusoidal embedding of timesteps (B,) -> (B, dim), float32."""
  half = dim // 2
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32)
  freqs = jnp.exp(exponent / (half - freq_shift))
  args = jnp.asarray(timesteps, jnp.float32)[:, None] * freqs[None, :]
  sin, cos = jnp.sin(args), jnp.cos(args)
  emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def conv3x3(features, dtype, name):
  """3x3 conv, padding 1: (B, H, W, C) -> (B, H, W, features); nn.Conv's parameters."""
  return convolution.Conv(features, (3, 3), ((1, 1), (1, 1)), dtype=dtype, name=name)


def group_norm(num_groups, eps, dtype, name):
  """GroupNorm matching torch.nn.GroupNorm numerics; shape-preserving; statistics in float32 under any dtype."""
  # Two-pass variance, as torch computes it (the fast E[x^2]-E[x]^2 form loses precision and breaks parity).
  return group_norm_lib.GroupNorm(num_groups=num_groups, epsilon=eps, dtype=dtype, name=name)


def maybe_remat(module_class, remat: bool, static_argnums: tuple[int, ...] = ()):
  """module_class, or its nn.remat version (static_argnums count `self` as 0) when remat is on."""
  return nn.remat(module_class, static_argnums=static_argnums) if remat else module_class


class TimestepEmbedding(nn.Module):
  """Linear-SiLU-Linear MLP on the sinusoidal embedding: (B, D) -> (B, dim)."""
  dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(self.dim, dtype=self.dtype, name='linear_1')(x)
    return nn.Dense(self.dim, dtype=self.dtype, name='linear_2')(nn.silu(x))


class ResnetBlock2D(nn.Module):
  """GroupNorm-SiLU-conv, + time projection, GroupNorm-SiLU-dropout-conv, + skip.

  (B, H, W, Cin), (B, T) -> (B, H, W, out_channels).
  """
  out_channels: int
  norm_num_groups: int = 32
  norm_eps: float = 1e-5
  dropout: float = 0.0
  output_scale_factor: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, temb, train=False):
    h = nn.silu(group_norm(self.norm_num_groups, self.norm_eps, self.dtype, 'norm1')(x))
    h = conv3x3(self.out_channels, self.dtype, 'conv1')(h)
    temb = nn.Dense(self.out_channels, dtype=self.dtype, name='time_emb_proj')(nn.silu(temb))
    h = h + temb[:, None, None, :]
    h = nn.silu(group_norm(self.norm_num_groups, self.norm_eps, self.dtype, 'norm2')(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = conv3x3(self.out_channels, self.dtype, 'conv2')(h)
    if x.shape[-1] != self.out_channels:
      x = convolution.Conv(self.out_channels, (1, 1), ((0, 0), (0, 0)), dtype=self.dtype, name='conv_shortcut')(x)
    return (x + h) / self.output_scale_factor


class _AttentionSettings(nn.Module):
  """Settings of self-attention that the blocks holding it share."""
  attention_head_dim: int | None = 8
  norm_num_groups: int = 32
  norm_eps: float = 1e-5
  attention_impl: str = 'auto'
  attention_chunk_size: int | None = None
  dtype: Any = jnp.float32


class SpatialSelfAttention(_AttentionSettings):
  """diffusers' Attention on a feature map: GroupNorm, MHSA, residual.

  (B, H, W, C) -> (B, H, W, C); heads = C // attention_head_dim.
  """
  output_scale_factor: float = 1.0

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    head_dim = self.attention_head_dim or c  # None means a single head.
    num_heads = c // head_dim
    if num_heads < 1:
      raise ValueError(f'attention_head_dim={head_dim} exceeds the {c} channels of an attention block: use a '
                       'smaller attention_head_dim')
    inner = num_heads * head_dim
    tokens = group_norm(self.norm_num_groups, self.norm_eps, self.dtype, 'group_norm')(x).reshape(b, h * w, c)
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, name=name)
    out = attention.multi_head_attention(
        dense(inner, 'to_q')(tokens), dense(inner, 'to_k')(tokens), dense(inner, 'to_v')(tokens), num_heads,
        impl=self.attention_impl, chunk_size=self.attention_chunk_size)
    out = dense(c, 'to_out_0')(out)
    return (out.reshape(b, h, w, c) + x) / self.output_scale_factor


class BottleneckCrossAttention(nn.Module):
  """torch nn.MultiheadAttention from a feature map to context tokens, residual.

  (B, H, W, C), context (B, N, D) -> (B, H, W, C); K/V are projected D -> C.
  """
  num_heads: int = 8
  attention_impl: str = 'auto'
  attention_chunk_size: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, context):
    b, h, w, c = x.shape
    if c % self.num_heads:
      raise ValueError(f'bottleneck channels {c} are not divisible by bottleneck_num_heads={self.num_heads}: '
                       'pick a divisor')
    query = x.reshape(b, h * w, c)
    context = context.astype(self.dtype)
    dense = lambda name: nn.Dense(c, dtype=self.dtype, name=name)
    attn = attention.multi_head_attention(
        dense('q_proj')(query), dense('k_proj')(context), dense('v_proj')(context), self.num_heads,
        impl=self.attention_impl, chunk_size=self.attention_chunk_size)
    return x + dense('out_proj')(attn).reshape(b, h, w, c)


class Downsample2D(nn.Module):
  """3x3 stride-2 conv: (B, H, W, C) -> (B, H/2, W/2, C).

  padding=1 pads each side by one (torch); 0 pads bottom/right only (old checkpoints).
  """
  channels: int
  padding: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return strided_conv.Conv3x3Stride2(self.channels, self.padding, self.dtype, name='conv')(x)


class Upsample2D(nn.Module):
  """Nearest-neighbour x2 then 3x3 conv: (B, H, W, C) -> (B, 2H, 2W, C)."""
  channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return conv3x3(self.channels, self.dtype, 'conv')(x)


class _Block(_AttentionSettings):
  """Settings every resnet / attention stack shares; subclasses add their layout."""
  dropout: float = 0.0
  remat: bool = False

  def resnet(self, out_channels: int, name: str, output_scale_factor: float = 1.0) -> nn.Module:
    """A (rematerialised) ResnetBlock2D; `train` (argument 3) stays a Python bool."""
    return maybe_remat(ResnetBlock2D, self.remat, static_argnums=(3,))(
        out_channels, self.norm_num_groups, self.norm_eps, self.dropout, output_scale_factor, self.dtype, name=name)

  def self_attention(self, name: str, norm_num_groups: int | None = None,
                     output_scale_factor: float = 1.0) -> nn.Module:
    """A (rematerialised) SpatialSelfAttention with this block's attention settings."""
    return maybe_remat(SpatialSelfAttention, self.remat)(
        attention_head_dim=self.attention_head_dim, norm_num_groups=norm_num_groups or self.norm_num_groups,
        norm_eps=self.norm_eps, output_scale_factor=output_scale_factor, attention_impl=self.attention_impl,
        attention_chunk_size=self.attention_chunk_size, dtype=self.dtype, name=name)


class DownBlock(_Block):
  """DownBlock2D / AttnDownBlock2D: resnets (+ attentions), then downsample.

  Returns the output (B, H', W', C) and the tuple of skip tensors it produced.
  """
  out_channels: int = 0
  num_layers: int = 1
  add_attention: bool = False
  add_downsample: bool = True
  downsample_padding: int = 1

  @nn.compact
  def __call__(self, x, temb, train=False):
    skips = []
    for i in range(self.num_layers):
      x = self.resnet(self.out_channels, f'resnets_{i}')(x, temb, train)
      if self.add_attention:
        x = self.self_attention(f'attentions_{i}')(x)
      skips.append(x)
    if self.add_downsample:
      x = Downsample2D(self.out_channels, self.downsample_padding, self.dtype, name='downsamplers_0')(x)
      skips.append(x)
    return x, tuple(skips)


class UpBlock(_Block):
  """UpBlock2D / AttnUpBlock2D: concat a skip, resnet (+ attention); upsample.

  (B, H, W, C), skips popped from the end -> (B, 2H, 2W, out_channels).
  """
  out_channels: int = 0
  num_layers: int = 1
  add_attention: bool = False
  add_upsample: bool = True

  @nn.compact
  def __call__(self, x, skips: Sequence[jax.Array], temb, train=False):
    skips = list(skips)
    for i in range(self.num_layers):
      x = jnp.concatenate([x, skips.pop()], axis=-1)
      x = self.resnet(self.out_channels, f'resnets_{i}')(x, temb, train)
      if self.add_attention:
        x = self.self_attention(f'attentions_{i}')(x)
    if self.add_upsample:
      x = Upsample2D(self.out_channels, self.dtype, name='upsamplers_0')(x)
    return x


class MidBlock(_Block):
  """UNetMidBlock2D: resnet, (self-attention), resnet; shape-preserving."""
  attn_norm_num_groups: int | None = None
  add_attention: bool = True
  output_scale_factor: float = 1.0

  @nn.compact
  def __call__(self, x, temb, train=False):
    c = x.shape[-1]
    x = self.resnet(c, 'resnets_0', self.output_scale_factor)(x, temb, train)
    if self.add_attention:
      x = self.self_attention('attentions_0', self.attn_norm_num_groups, self.output_scale_factor)(x)
    return self.resnet(c, 'resnets_1', self.output_scale_factor)(x, temb, train)

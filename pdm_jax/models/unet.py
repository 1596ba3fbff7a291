"""UNet2D: diffusers' UNet2DModel in flax, plus PDM's bottleneck cross-attention.

Layout is NHWC; parameter names mirror diffusers' state-dict keys (see `pdm_jax.models.diffusers_format`).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from pdm_jax.models import attention
from pdm_jax.models import unet_blocks

DOWN_BLOCK_TYPES = ('DownBlock2D', 'AttnDownBlock2D')
UP_BLOCK_TYPES = ('UpBlock2D', 'AttnUpBlock2D')


def check_unet_config(image_size: int | Sequence[int], block_out_channels: Sequence[int], norm_num_groups: int = 32,
                      down_block_types: Sequence[str] | None = None, up_block_types: Sequence[str] | None = None,
                      attention_head_dim: int | None = 8, bottleneck_attention: bool = False,
                      bottleneck_num_heads: int = 8, attention_impl: str = 'auto') -> None:
  """Raises a one-line ValueError if the UNet cannot run on image_size (int or (H, W))."""
  num_halvings = len(block_out_channels) - 1
  factor = 2**num_halvings
  sizes = (image_size,) * 2 if isinstance(image_size, int) else tuple(image_size)
  for size in sizes:
    if size < factor or size % factor:
      suggestion = max(factor, -(-size // factor) * factor)
      raise ValueError(f'image_size={size} cannot be halved {num_halvings} times by the UNet: use a multiple of '
                       f'{factor} such as {suggestion}')
  for channels in block_out_channels:
    if channels % norm_num_groups:
      raise ValueError(f'block_out_channels={tuple(block_out_channels)} has {channels} channels, not divisible by '
                       f'norm_num_groups={norm_num_groups}: use multiples of it')
  for kind, types, allowed in (('down', down_block_types, DOWN_BLOCK_TYPES),
                               ('up', up_block_types, UP_BLOCK_TYPES)):
    if types is None:
      continue
    if len(types) != len(block_out_channels):
      raise ValueError(f'{kind}_block_types has {len(types)} entries but block_out_channels has '
                       f'{len(block_out_channels)}: give one block type per level')
    for name in types:
      if name not in allowed:
        raise ValueError(f'unsupported {kind} block type {name!r}: use one of {", ".join(allowed)}')
  # Attention runs at the Attn* levels and in the mid block (last level).
  attn_channels = ([block_out_channels[-1]]
                   + [c for c, t in zip(block_out_channels, down_block_types or ()) if 'Attn' in t]
                   + [c for c, t in zip(block_out_channels[::-1], up_block_types or ()) if 'Attn' in t])
  if attention_head_dim is not None and attention_head_dim > min(attn_channels):
    raise ValueError(f'attention_head_dim={attention_head_dim} exceeds the {min(attn_channels)} channels of an '
                     'attention block: lower it')
  if bottleneck_attention and block_out_channels[-1] % bottleneck_num_heads:
    raise ValueError(f'bottleneck channels {block_out_channels[-1]} are not divisible by '
                     f'bottleneck_num_heads={bottleneck_num_heads}: pick a divisor')
  attention.check_attention_impl(attention_impl)


class UNet2D(nn.Module):
  """diffusers UNet2DModel (+ optional PDM bottleneck attention), NHWC.

  sample (B, H, W, in_channels), timesteps (B,) or scalar -> (B, H, W, out_channels) in float32.
  """
  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: Sequence[int] = (128, 256, 256, 256)
  layers_per_block: int = 2
  down_block_types: Sequence[str] = ('DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D', 'DownBlock2D')
  up_block_types: Sequence[str] = ('UpBlock2D', 'UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D')
  attention_head_dim: int | None = 8  # heads = channels // 8; None: 1 head.
  norm_num_groups: int = 32
  norm_eps: float = 1e-5
  dropout: float = 0.0
  num_class_embeds: int | None = None  # Class-conditional baseline.
  bottleneck_attention: bool = False  # PDM: cross-attention to `context`.
  bottleneck_num_heads: int = 8
  # Less common diffusers options, kept so pretrained checkpoints import.
  flip_sin_to_cos: bool = True
  freq_shift: float = 0.0
  time_embedding_dim: int | None = None  # Default 4 * block_out_channels[0].
  downsample_padding: int = 1
  mid_block_scale_factor: float = 1.0
  attn_norm_num_groups: int | None = None  # Mid attention; None: norm_num_groups.
  add_attention: bool = True  # Self-attention in the mid block.
  center_input_sample: bool = False
  # Memory and speed: which attention implementation, its query chunk, recomputation of block activations in the
  # backward pass, and the compute dtype (parameters stay float32).
  attention_impl: str = 'auto'
  attention_chunk_size: int | None = None
  remat: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, sample, timesteps, context=None, class_labels=None, train=False, class_vectors=None):
    """(B, H, W, C_in), (B,) | scalar, context (B, N, D) -> (B, H, W, C_out).

    class_vectors (B, E): ProtoDiffusion's class embedding rows, projected by a Dense layer to the time-embedding
    width and added to it (an alternative to num_class_embeds + class_labels).
    """
    if sample.ndim != 4 or sample.shape[-1] != self.in_channels:
      raise ValueError(f'sample has shape {sample.shape}, expected NHWC with {self.in_channels} channels: transpose '
                       'NCHW inputs')
    check_unet_config(sample.shape[1:3], self.block_out_channels, self.norm_num_groups, self.down_block_types,
                      self.up_block_types, self.attention_head_dim, self.bottleneck_attention,
                      self.bottleneck_num_heads, self.attention_impl)
    if self.downsample_padding not in (0, 1):
      raise ValueError(f'downsample_padding={self.downsample_padding} is not supported: use 1 (or 0 for old '
                       'checkpoints)')
    if self.bottleneck_attention and context is None:
      raise ValueError('bottleneck_attention=True needs context tokens (B, N, D): pass context=')
    if self.num_class_embeds is not None and class_labels is None:
      raise ValueError('num_class_embeds is set, so class_labels (B,) are needed: pass class_labels=')
    if self.num_class_embeds is None and class_labels is not None:
      raise ValueError('class_labels given to an unconditional UNet: set num_class_embeds or drop class_labels')
    if self.num_class_embeds is not None and class_vectors is not None:
      raise ValueError('class_vectors given to a UNet with its own class embedding: pass class_labels only')

    batch = sample.shape[0]
    channels = self.block_out_channels
    if self.center_input_sample:
      sample = 2 * sample - 1.0
    sample = sample.astype(self.dtype)

    # Time (and class) embedding.
    timesteps = jnp.broadcast_to(jnp.asarray(timesteps), (batch,))
    t_emb = unet_blocks.timestep_embedding(timesteps, channels[0], self.flip_sin_to_cos, self.freq_shift)
    emb = unet_blocks.TimestepEmbedding(self.time_embedding_dim or 4 * channels[0], self.dtype,
                                        name='time_embedding')(t_emb.astype(self.dtype))
    if self.num_class_embeds is not None:
      emb = emb + nn.Embed(self.num_class_embeds, emb.shape[-1], dtype=self.dtype,
                           name='class_embedding')(class_labels)
    if class_vectors is not None:
      emb = emb + nn.Dense(emb.shape[-1], dtype=self.dtype, name='class_projection')(class_vectors.astype(self.dtype))

    common = dict(attention_head_dim=self.attention_head_dim, norm_num_groups=self.norm_num_groups,
                  norm_eps=self.norm_eps, dropout=self.dropout, attention_impl=self.attention_impl,
                  attention_chunk_size=self.attention_chunk_size, remat=self.remat, dtype=self.dtype)
    x = unet_blocks.conv3x3(channels[0], self.dtype, 'conv_in')(sample)

    # Down path; every block output is kept as a skip, as diffusers does.
    skips = [x]
    for i, block_type in enumerate(self.down_block_types):
      x, block_skips = unet_blocks.DownBlock(
          out_channels=channels[i], num_layers=self.layers_per_block, add_attention=block_type == 'AttnDownBlock2D',
          add_downsample=i < len(channels) - 1, downsample_padding=self.downsample_padding,
          name=f'down_blocks_{i}', **common)(x, emb, train)
      skips.extend(block_skips)

    if self.bottleneck_attention:
      x = unet_blocks.BottleneckCrossAttention(
          self.bottleneck_num_heads, self.attention_impl, self.attention_chunk_size, self.dtype,
          name='bottleneck_attn')(x, context)

    x = unet_blocks.MidBlock(attn_norm_num_groups=self.attn_norm_num_groups, add_attention=self.add_attention,
                             output_scale_factor=self.mid_block_scale_factor, name='mid_block',
                             **common)(x, emb, train)

    # Up path: each block consumes layers_per_block + 1 skips, newest first.
    num_up_layers = self.layers_per_block + 1
    for i, block_type in enumerate(self.up_block_types):
      block_skips, skips = skips[-num_up_layers:], skips[:-num_up_layers]
      x = unet_blocks.UpBlock(
          out_channels=channels[-1 - i], num_layers=num_up_layers, add_attention=block_type == 'AttnUpBlock2D',
          add_upsample=i < len(channels) - 1, name=f'up_blocks_{i}', **common)(x, block_skips, emb, train)

    x = unet_blocks.group_norm(self.norm_num_groups, self.norm_eps, self.dtype, 'conv_norm_out')(x)
    x = unet_blocks.conv3x3(self.out_channels, self.dtype, 'conv_out')(nn.silu(x))
    # The loss and the samplers work in float32, whatever the compute dtype.
    return x.astype(jnp.float32)

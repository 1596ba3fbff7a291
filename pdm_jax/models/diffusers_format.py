"""How diffusers names what UNet2D holds: UNet2DModel config keys, state-dict keys and tensor layouts, scheduler names.

The one home of this knowledge, read both ways: `diffusers_import` (diffusers -> UNet2D) and `diffusers_export`
(UNet2D -> diffusers). Pure data and array helpers; no files, no torch.
"""

import re

import numpy as np

# diffusers' UNet2DModel defaults, used where an (old) config omits a key.
DIFFUSERS_DEFAULTS = {
    'in_channels': 3,
    'out_channels': 3,
    'center_input_sample': False,
    'time_embedding_type': 'positional',
    'time_embedding_dim': None,
    'freq_shift': 0,
    'flip_sin_to_cos': True,
    'down_block_types': ('DownBlock2D', 'AttnDownBlock2D', 'AttnDownBlock2D',
                         'AttnDownBlock2D'),
    'mid_block_type': 'UNetMidBlock2D',
    'up_block_types': ('AttnUpBlock2D', 'AttnUpBlock2D', 'AttnUpBlock2D',
                       'UpBlock2D'),
    'block_out_channels': (224, 448, 672, 896),
    'layers_per_block': 2,
    'mid_block_scale_factor': 1,
    'downsample_padding': 1,
    'downsample_type': 'conv',
    'upsample_type': 'conv',
    'dropout': 0.0,
    'act_fn': 'silu',
    'attention_head_dim': 8,
    'norm_num_groups': 32,
    'attn_norm_num_groups': None,
    'norm_eps': 1e-5,
    'resnet_time_scale_shift': 'default',
    'add_attention': True,
    'class_embed_type': None,
    'num_class_embeds': None,
}
# Config keys that are UNet2D fields of the same name and meaning.
COPIED_KEYS = ('in_channels', 'out_channels', 'layers_per_block',
               'attention_head_dim', 'norm_num_groups', 'norm_eps', 'dropout',
               'num_class_embeds', 'flip_sin_to_cos', 'freq_shift',
               'time_embedding_dim', 'downsample_padding',
               'mid_block_scale_factor', 'attn_norm_num_groups',
               'add_attention', 'center_input_sample')
# Options UNet2D implements only at one value: key -> accepted values (an export writes the first, or the UNet2D field
# of that name: downsample_padding).
FIXED_OPTIONS = {
    'time_embedding_type': ('positional',),
    'resnet_time_scale_shift': ('default',),
    'class_embed_type': (None,),
    'mid_block_type': ('UNetMidBlock2D',),
    'act_fn': ('silu', 'swish'),
    'downsample_type': ('conv',),
    'upsample_type': ('conv',),
    'downsample_padding': (0, 1),
}
# Keys that do not change the network's weights or forward pass.
IGNORED_KEYS = ('sample_size', 'num_train_timesteps')
# Pre-0.12 diffusers attention names -> current ones (modeling_utils does the same).
LEGACY_ATTENTION_NAMES = {'query': 'to_q', 'key': 'to_k', 'value': 'to_v',
                          'proj_attn': 'to_out_0'}
# nn.ModuleList attributes: item i is 'name.<i>' in a diffusers key and the flax module 'name_<i>'. Other flax names
# ending in _<digit> (time_embedding's linear_1) are the same in both.
MODULE_LISTS = ('down_blocks', 'up_blocks', 'resnets', 'attentions', 'downsamplers', 'upsamplers', 'to_out')
# Flax leaf names whose diffusers tensor is called 'weight' (Dense / Conv, GroupNorm, Embed); 'bias' is 'bias'.
WEIGHT_LEAVES = ('kernel', 'scale', 'embedding')

# DDPMScheduler beta_schedule / prediction_type names -> pdm_jax's (diffusion.make_schedule, PREDICTION_TYPES).
BETA_SCHEDULES = {'linear': 'linear', 'scaled_linear': 'quad',
                  'squaredcos_cap_v2': 'cosine'}
PREDICTION_TYPES = {'epsilon': 'epsilon', 'sample': 'sample',
                    'v_prediction': 'v'}


def flax_module_path(key: str) -> tuple[tuple[str, ...], str]:
  """'down_blocks.0.attentions.1.query.weight' -> (module path, leaf name)."""
  # 'name.<i>' becomes the flax list-style name 'name_<i>'.
  parts = re.sub(r'\.(\d+)(?=\.|$)', r'_\1', key).split('.')
  path, leaf = parts[:-1], parts[-1]
  if len(path) >= 2 and re.fullmatch(r'attentions_\d+', path[-2]):
    path[-1] = LEGACY_ATTENTION_NAMES.get(path[-1], path[-1])
  if len(path) >= 2 and path[-1] in ('op', 'Conv2d_0') and re.fullmatch(
      r'downsamplers_\d+', path[-2]):
    path[-1] = 'conv'  # Older Downsample2D aliases of the same conv.
  return tuple(path), leaf


_LIST_ITEM = re.compile(rf'({"|".join(MODULE_LISTS)})_(\d+)')


def diffusers_key(path: tuple[str, ...], leaf_kind: str) -> str:
  """(module path, flax leaf) -> current diffusers key, e.g. (('mid_block', 'attentions_0', 'to_out_0'), 'kernel')
  -> 'mid_block.attentions.0.to_out.0.weight'; a ValueError if flax_module_path would not map it back."""
  if leaf_kind not in WEIGHT_LEAVES + ('bias',):
    raise ValueError(f'flax leaf {"/".join(path)}/{leaf_kind} has no diffusers counterpart: export only UNet2D params')
  parts = [_LIST_ITEM.sub(r'\1.\2', part) if _LIST_ITEM.fullmatch(part) else part for part in path]
  key = '.'.join(parts + ['bias' if leaf_kind == 'bias' else 'weight'])
  # The importer's reading is the definition: a key it would place elsewhere is no key for this param.
  if flax_module_path(key)[0] != tuple(path):
    raise ValueError(f'flax param {"/".join(path)} has no diffusers key (tried {key}): export only UNet2D params')
  return key


def to_flax_layout(leaf_kind: str, tensor: np.ndarray) -> np.ndarray:
  """Converts a torch-layout tensor to the flax layout of `leaf_kind`."""
  if leaf_kind == 'kernel' and tensor.ndim == 4:
    return tensor.transpose(2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)
  if leaf_kind == 'kernel' and tensor.ndim == 2:
    return tensor.T  # (out, in) -> (in, out)
  return tensor


def to_torch_layout(leaf_kind: str, array: np.ndarray) -> np.ndarray:
  """Converts a flax leaf of `leaf_kind` to torch layout: the inverse of to_flax_layout."""
  if leaf_kind == 'kernel' and array.ndim == 4:
    return array.transpose(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
  if leaf_kind == 'kernel' and array.ndim == 2:
    return array.T  # (in, out) -> (out, in)
  return array


def torch_shape(leaf_kind: str, shape) -> tuple[int, ...]:
  """The torch-layout shape of a flax leaf of `leaf_kind`, for error messages."""
  if leaf_kind == 'kernel' and len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if leaf_kind == 'kernel' and len(shape) == 2:
    return (shape[1], shape[0])
  return tuple(shape)

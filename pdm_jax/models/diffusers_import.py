"""Imports diffusers UNet2DModel checkpoints (and PDM's bottleneck) into UNet2D.

With diffusers_export, the only modules of `pdm_jax.models` that touch files: a diffusers model
directory holds `config.json` and `diffusion_pytorch_model.safetensors` (read
with safetensors' numpy API, no torch needed) or `.bin` (needs torch).
"""

import json
import logging
import os
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from pdm_jax import torch_weights
from pdm_jax.models import diffusers_format
from pdm_jax.models import unet as unet_lib

_WEIGHT_FILES = ('diffusion_pytorch_model.safetensors',
                 'diffusion_pytorch_model.bin')
# The reference PDM hard-codes nn.MultiheadAttention(num_heads=8).
_REFERENCE_BOTTLENECK_HEADS = 8


def unet_kwargs_from_diffusers_config(config: Mapping[str, Any]) -> dict[str, Any]:
  """Maps a diffusers UNet2DModel config.json dict to UNet2D keyword arguments."""
  class_name = config.get('_class_name', 'UNet2DModel')
  if class_name != 'UNet2DModel':
    raise ValueError(f'config describes a {class_name}, not a UNet2DModel: '
                     'point at a UNet2DModel directory')
  full = dict(diffusers_format.DIFFUSERS_DEFAULTS)
  full.update({k: v for k, v in config.items() if not k.startswith('_')})
  for key, accepted in diffusers_format.FIXED_OPTIONS.items():
    if full[key] not in accepted:
      raise ValueError(f'diffusers option {key}={full[key]!r} is not supported by '
                       f'UNet2D: only {", ".join(map(repr, accepted))}')
  known = set(diffusers_format.DIFFUSERS_DEFAULTS) | set(diffusers_format.IGNORED_KEYS) | {
      'bottleneck_attention', 'bottleneck_num_heads'}
  unknown = sorted(set(full) - known)
  if unknown:
    logging.warning('Ignoring unknown diffusers config keys: %s', unknown)
  if full['norm_num_groups'] is None:
    raise ValueError('norm_num_groups=None is not supported: set it in config.json')
  kwargs = {key: full[key] for key in diffusers_format.COPIED_KEYS}
  kwargs['block_out_channels'] = tuple(full['block_out_channels'])
  kwargs['down_block_types'] = tuple(full['down_block_types'])
  kwargs['up_block_types'] = tuple(full['up_block_types'])
  # Our own exports may carry these; diffusers configs never do.
  for key in ('bottleneck_attention', 'bottleneck_num_heads'):
    if key in full:
      kwargs[key] = full[key]
  unet_lib.check_unet_config(
      2 ** (len(kwargs['block_out_channels']) - 1), kwargs['block_out_channels'],
      kwargs['norm_num_groups'], kwargs['down_block_types'],
      kwargs['up_block_types'], kwargs['attention_head_dim'])
  return kwargs


def _split_bottleneck_in_proj(state_dict):
  """Splits torch MultiheadAttention's packed in-projection into q/k/v tensors."""
  out = {}
  for key, value in state_dict.items():
    match = re.fullmatch(r'(.*bottleneck_attn)\.(in_proj_weight|in_proj_bias|'
                         r'([qkv])_proj_weight)', key)
    if not match:
      out[key] = value
      continue
    prefix, name, single = match.group(1), match.group(2), match.group(3)
    if single:
      out[f'{prefix}.{single}_proj.weight'] = value
      continue
    if value.shape[0] % 3:
      raise ValueError(f'{key} has shape {tuple(value.shape)}, whose first axis is '
                       'not 3 * embed_dim: check the checkpoint')
    leaf = 'weight' if name == 'in_proj_weight' else 'bias'
    for part, chunk in zip('qkv', np.split(np.asarray(value), 3, axis=0)):
      out[f'{prefix}.{part}_proj.{leaf}'] = chunk
  return out


def _to_numpy(value) -> np.ndarray:
  """A float32 numpy copy of a numpy array or (possibly fp16/bf16) torch tensor."""
  if hasattr(value, 'detach'):  # torch.Tensor, without importing torch.
    value = value.detach().cpu().float().numpy()
  return np.asarray(value, dtype=np.float32)


def _context_dim(state_dict, channels):
  """Width D of the bottleneck's context tokens implied by the k projection."""
  for key, value in state_dict.items():
    if key.endswith('bottleneck_attn.k_proj.weight'):
      return value.shape[1]
  return channels


def expected_param_shapes(module: unet_lib.UNet2D, context_dim: int | None = None):
  """Flat {path tuple: shape} of `module`'s params, without allocating them."""
  size = 2 ** (len(module.block_out_channels) - 1)
  sample = jnp.zeros((1, size, size, module.in_channels), module.dtype)
  kwargs = {}
  if module.bottleneck_attention:
    kwargs['context'] = jnp.zeros(
        (1, 1, context_dim or module.block_out_channels[-1]))
  if module.num_class_embeds is not None:
    kwargs['class_labels'] = jnp.zeros((1,), jnp.int32)
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), sample,
                          jnp.zeros((1,), jnp.int32), **kwargs)
  return {path: leaf.shape for path, leaf in
          traverse_util.flatten_dict(shapes['params']).items()}


def convert_diffusers_state_dict(state_dict: Mapping[str, Any],
                                 module_config: unet_lib.UNet2D | Mapping[str, Any],
                                 prefix: str = '', strict: bool = True):
  """diffusers state dict {key: torch-layout array} -> UNet2D params tree (shape-checked).

  Only keys under `prefix` are read (e.g. 'unet.' for a reference PDM state dict).
  """
  module = (module_config if isinstance(module_config, unet_lib.UNet2D)
            else unet_lib.UNet2D(**module_config))
  tensors = {key[len(prefix):]: _to_numpy(value)
             for key, value in state_dict.items() if key.startswith(prefix)}
  tensors = _split_bottleneck_in_proj(tensors)
  expected = expected_param_shapes(
      module, _context_dim(tensors, module.block_out_channels[-1]))

  params, unused = {}, []
  for key, tensor in sorted(tensors.items()):
    path, leaf = diffusers_format.flax_module_path(key)
    if leaf == 'bias' and path + ('bias',) in expected:
      kind = 'bias'
    elif leaf == 'weight':
      kind = next((k for k in diffusers_format.WEIGHT_LEAVES
                   if path + (k,) in expected), None)
    else:
      kind = None
    if kind is None:
      unused.append(key)
      continue
    want = expected[path + (kind,)]
    value = diffusers_format.to_flax_layout(kind, tensor)
    if value.shape != tuple(want):
      raise ValueError(f'diffusers tensor {prefix}{key} has shape {tensor.shape} '
                       f'but UNet2D expects {diffusers_format.torch_shape(kind, want)}: check the '
                       'config matches the checkpoint')
    if path + (kind,) in params:
      continue  # An alias (e.g. Downsample2D's Conv2d_0) of a tensor already set.
    params[path + (kind,)] = jnp.asarray(value)

  missing = sorted('/'.join(p) for p in expected if p not in params)
  if missing:
    raise ValueError(f'{len(missing)} UNet2D params have no diffusers tensor '
                     f'(first: {missing[:5]}): check the config matches the checkpoint')
  if unused:
    message = (f'{len(unused)} diffusers tensors are unused by UNet2D '
               f'(first: {unused[:5]})')
    if strict:
      raise ValueError(message + ': check the config, or pass strict=False')
    logging.warning(message)
  return traverse_util.unflatten_dict(params)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a .safetensors or torch .bin file into numpy arrays; neither needs torch."""
  if path.endswith('.safetensors'):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    return load_file(path)
  return torch_weights.read_state_dict(path)


def _resolve_unet_dir(directory: str) -> str:
  """A UNet directory, or a pipeline directory's `unet/` subdirectory."""
  if os.path.isfile(os.path.join(directory, 'config.json')):
    return directory
  if os.path.isfile(os.path.join(directory, 'unet', 'config.json')):
    return os.path.join(directory, 'unet')
  raise ValueError(f'no config.json in {directory} or {directory}/unet: point at '
                   'a diffusers UNet2DModel (or pipeline) directory')


def _read_weights(unet_dir: str) -> dict[str, np.ndarray]:
  """All tensors of a diffusers model directory, single-file or sharded."""
  for name in _WEIGHT_FILES:
    path = os.path.join(unet_dir, name)
    if os.path.isfile(path):
      return read_state_dict(path)
    if os.path.isfile(path + '.index.json'):
      with open(path + '.index.json') as f:
        shards = sorted(set(json.load(f)['weight_map'].values()))
      state_dict = {}
      for shard in shards:
        state_dict.update(read_state_dict(os.path.join(unet_dir, shard)))
      return state_dict
  raise ValueError(f'no {" or ".join(_WEIGHT_FILES)} in {unet_dir}: save the '
                   'model with save_pretrained')


def load_diffusers_unet(directory: str, dtype: Any = jnp.float32,
                        strict: bool = True) -> tuple[unet_lib.UNet2D, dict[str, Any]]:
  """Loads a diffusers UNet2DModel (or pipeline) directory -> (UNet2D, params).

  A `bottleneck_attn.*` tensor (reference PDM's Unet) turns on bottleneck_attention.
  """
  unet_dir = _resolve_unet_dir(directory)
  with open(os.path.join(unet_dir, 'config.json')) as f:
    kwargs = unet_kwargs_from_diffusers_config(json.load(f))
  state_dict = _read_weights(unet_dir)
  if any(key.startswith('bottleneck_attn.') for key in state_dict):
    kwargs['bottleneck_attention'] = True
    kwargs.setdefault('bottleneck_num_heads', _REFERENCE_BOTTLENECK_HEADS)
  module = unet_lib.UNet2D(dtype=dtype, **kwargs)
  return module, convert_diffusers_state_dict(state_dict, module, strict=strict)

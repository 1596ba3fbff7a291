"""Exports a ddpm / cddpm / protodiffusion DiffusionModel as a diffusers folder: UNet2DModel weights and config,
DDPMScheduler config. ProtoDiffusion's class embedding (centres through a Dense projection) is folded into the one
table a UNet2DModel has (`num_class_embeds`): row c = centre_c @ kernel + bias, the null row last.

The reverse of `diffusers_import`; both read their names from `diffusers_format`. Weights are written with
safetensors' numpy API, so exporting needs neither torch nor diffusers. The folder layout:

  DIR/unet/config.json, DIR/unet/diffusion_pytorch_model.safetensors   (diffusers.UNet2DModel.from_pretrained)
  DIR/scheduler/scheduler_config.json                                  (diffusers.DDPMScheduler.from_pretrained)
  DIR/model_index.json                                                 (diffusers.DDPMPipeline; unconditional only)
"""

import json
import os
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from pdm_jax.models import diffusers_format
from pdm_jax.models import diffusers_import
from pdm_jax.models import kinds
from pdm_jax.models import pdm
from pdm_jax.models import unet as unet_lib

# Written as `_diffusers_version`: the oldest diffusers these configs are tested against (requirements-dev.txt);
# diffusers reads it only to apply deprecations of older files.
DIFFUSERS_VERSION = '0.30.0'
WEIGHTS_FILE = 'diffusion_pytorch_model.safetensors'


def check_exportable(kind: kinds.ModelKind) -> None:
  """A one-line ValueError unless models of `kind` are a plain (optionally class-embedded) UNet, as UNet2DModel is."""
  if kind.prototype_memory:
    raise ValueError(f'model.type={kind.name} conditions the UNet bottleneck on prototypes by cross-attention, which '
                     'a diffusers UNet2DModel cannot express: only ddpm, cddpm and protodiffusion models export.')


def fold_class_projection(params: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
  """ProtoDiffusion params -> (UNet params with a class_embedding table in place of class_projection, table rows).

  The UNet adds class_projection(centre) to the time embedding; a table of the projected centres (and null row)
  adds the same vectors by label, which is what UNet2DModel's class embedding does.
  """
  rows = [np.asarray(params[pdm.CLASS_CENTRES], np.float64)]
  if pdm.NULL_CLASS_EMBEDDING in params:
    rows.append(np.asarray(params[pdm.NULL_CLASS_EMBEDDING], np.float64)[None])
  projection = params['unet']['class_projection']
  table = np.concatenate(rows) @ np.asarray(projection['kernel'], np.float64) + np.asarray(projection['bias'],
                                                                                            np.float64)
  unet_params = {name: value for name, value in params['unet'].items() if name != 'class_projection'}
  unet_params['class_embedding'] = {'embedding': table.astype(np.float32)}
  return unet_params, len(table)


def unet_config(unet: unet_lib.UNet2D, sample_size: int) -> dict[str, Any]:
  """The diffusers UNet2DModel config.json dict of `unet` on (sample_size, sample_size) images."""
  if unet.bottleneck_attention:
    raise ValueError('this UNet2D has PDM bottleneck cross-attention, which a diffusers UNet2DModel cannot express: '
                     'export a ddpm or cddpm model.')
  config = {'_class_name': 'UNet2DModel', '_diffusers_version': DIFFUSERS_VERSION}
  config.update(diffusers_format.DIFFUSERS_DEFAULTS)
  config.update({key: accepted[0] for key, accepted in diffusers_format.FIXED_OPTIONS.items()})
  config.update({key: getattr(unet, key) for key in diffusers_format.COPIED_KEYS})
  config.update(sample_size=int(sample_size), block_out_channels=list(unet.block_out_channels),
                down_block_types=list(unet.down_block_types), up_block_types=list(unet.up_block_types))
  return config


def unet_state_dict(unet: unet_lib.UNet2D, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """UNet2D params tree -> diffusers state dict {key: float32 torch-layout array}; shape-checked against `unet`."""
  flat = traverse_util.flatten_dict(dict(params))
  shapes = {path: np.shape(value) for path, value in flat.items()}
  expected = {path: tuple(shape) for path, shape in diffusers_import.expected_param_shapes(unet).items()}
  wrong = sorted('/'.join(path) for path in set(shapes) | set(expected) if shapes.get(path) != expected.get(path))
  if wrong:
    raise ValueError(f'the params do not fit the UNet (first differences: {wrong[:5]}): export the params of this '
                     'model, e.g. state.ema_params["unet"]')
  tensors = {}
  for (*modules, leaf), value in flat.items():
    array = diffusers_format.to_torch_layout(leaf, np.asarray(value, np.float32))
    tensors[diffusers_format.diffusers_key(tuple(modules), leaf)] = np.ascontiguousarray(array)
  return tensors


def scheduler_config(diffusion_config: Mapping[str, Any]) -> dict[str, Any]:
  """The DDPMScheduler config dict of config.diffusion (num_timesteps, schedule, beta_start/end, prediction_type)."""
  to_diffusers = {ours: theirs for theirs, ours in diffusers_format.BETA_SCHEDULES.items()}
  schedule = diffusion_config['schedule']
  if schedule not in to_diffusers:
    raise ValueError(f'diffusion.schedule={schedule!r} has no diffusers DDPMScheduler beta_schedule: export a run '
                     f'trained with one of {", ".join(to_diffusers)}')
  prediction_types = {ours: theirs for theirs, ours in diffusers_format.PREDICTION_TYPES.items()}
  prediction_type = diffusion_config['prediction_type']
  if prediction_type not in prediction_types:
    raise ValueError(f'diffusion.prediction_type={prediction_type!r} has no diffusers counterpart: export a run '
                     f'trained with one of {", ".join(prediction_types)}')
  return {
      '_class_name': 'DDPMScheduler', '_diffusers_version': DIFFUSERS_VERSION,
      'num_train_timesteps': int(diffusion_config['num_timesteps']),
      # Read by 'linear' and 'scaled_linear' (our 'quad'); the cosine schedule has none, in both libraries.
      'beta_start': float(diffusion_config['beta_start']), 'beta_end': float(diffusion_config['beta_end']),
      'beta_schedule': to_diffusers[schedule], 'trained_betas': None,
      'prediction_type': prediction_types[prediction_type],
      # What pdm_jax's ddpm sampler does by default: beta_tilde variance, x0 clipped to [-1, 1], 'leading' spacing.
      'variance_type': 'fixed_small', 'clip_sample': True, 'clip_sample_range': 1.0,
      'timestep_spacing': 'leading', 'steps_offset': 0,
  }


def _write_json(path: str, value: Mapping[str, Any]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(value, f, indent=2, sort_keys=True)
    f.write('\n')


def export_pipeline(model: pdm.DiffusionModel, params: Mapping[str, Any], image_size: int,
                    diffusion_config: Mapping[str, Any], output_dir: str) -> list[str]:
  """Writes `model` with `params` (its params tree, {'unet': ...}) as a diffusers folder; returns the files written.

  output_dir must be new or empty. model_index.json (a DDPMPipeline) is written for unconditional models only:
  DDPMPipeline passes no class labels, so a cddpm UNet is loaded with UNet2DModel and called with class_labels=.
  """
  check_exportable(model.kind)
  allowed = {'unet'} | ({pdm.CLASS_CENTRES, pdm.NULL_CLASS_EMBEDDING} if model.kind.class_prototypes else set())
  extra = sorted(set(params) - allowed)
  if extra:
    raise ValueError(f'params hold {extra} besides the UNet: pass the DiffusionModel params ({{"unet": ...}}) of a '
                     'ddpm, cddpm or protodiffusion model')
  if 'unet' not in params:
    raise ValueError('params have no "unet" entry: pass the DiffusionModel params tree, e.g. state.ema_params')
  if os.path.isdir(output_dir) and os.listdir(output_dir):
    raise ValueError(f'{output_dir} is not empty: export into a new or empty directory')
  unet = model.make_unet()
  unet_params = params['unet']
  if model.kind.class_prototypes:
    if pdm.CLASS_CENTRES not in params or 'class_projection' not in unet_params:
      raise ValueError('protodiffusion params need class_centres and unet/class_projection: pass the '
                       'DiffusionModel params tree, e.g. state.ema_params')
    unet_params, num_rows = fold_class_projection(params)
    unet = unet.clone(num_class_embeds=num_rows)
  # Everything is computed before the first file is written: a refused export leaves no partial folder.
  files = {
      os.path.join('unet', 'config.json'): unet_config(unet, image_size),
      os.path.join('scheduler', 'scheduler_config.json'): scheduler_config(diffusion_config),
  }
  if not model.kind.conditional:
    files['model_index.json'] = {'_class_name': 'DDPMPipeline', '_diffusers_version': DIFFUSERS_VERSION,
                                 'scheduler': ['diffusers', 'DDPMScheduler'], 'unet': ['diffusers', 'UNet2DModel']}
  tensors = unet_state_dict(unet, unet_params)

  from safetensors.numpy import save  # pylint: disable=g-import-not-at-top
  for name, value in files.items():
    _write_json(os.path.join(output_dir, name), value)
  weights = os.path.join(output_dir, 'unet', WEIGHTS_FILE)
  # Written by open(), not save_file (which makes the file private, 0600): the folder is meant to be shared.
  # 'format': 'pt' is what torch-side loaders (transformers, some diffusers paths) check for.
  with open(weights, 'wb') as f:
    f.write(save(tensors, metadata={'format': 'pt'}))
  return sorted(os.path.join(output_dir, name) for name in files) + [weights]

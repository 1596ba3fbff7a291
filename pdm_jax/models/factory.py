"""Builds the DiffusionModel a config asks for, checking the choices that would otherwise fail deep in flax."""

import jax.numpy as jnp
import ml_collections

from pdm_jax.models import attention
from pdm_jax.models import kinds
from pdm_jax.models import pdm
from pdm_jax.models import prototypes as prototypes_lib
from pdm_jax.models import unet as unet_lib


# model.dtype -> compute dtype. float16 is left out: without loss scaling its gradients underflow.
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def compute_dtype(name: str):
  """The jnp dtype of model.dtype ('float32' | 'bfloat16'); a one-line ValueError otherwise."""
  if name not in DTYPES:
    raise ValueError(f'model.dtype={name!r} is not supported: use one of {", ".join(DTYPES)}.')
  return DTYPES[name]


# model.* fields that fix the UNet's parameter shapes (with the image shape and the model kind's extras below).
_UNET_SHAPE_FIELDS = ('block_out_channels', 'layers_per_block', 'down_block_types', 'up_block_types',
                      'attention_head_dim', 'norm_num_groups')


# model.* fields passed as they are: to the UNet, and to the prototype memory and its losses.
_UNET_SETTINGS = ('dropout', 'bottleneck_num_heads', 'attention_impl', 'attention_chunk_size')
_PROTOTYPE_SETTINGS = ('prototype_dim', 'tau', 'alpha', 'beta', 'prototype_assignment', 'sinkhorn_epsilon',
                       'sinkhorn_iters', 'prototype_queue_size')


def shape_fields(model_config: ml_collections.ConfigDict, num_conditions: int, null_class: bool = False) -> dict:
  """The model settings that fix parameter shapes (sequences as tuples); a checkpoint fits only the same ones.

  null_class: whether the model learns an unconditional (null) class for classifier-free guidance.
  """
  kind = kinds.get(model_config.type)
  fields = {name: tuple(value) if isinstance(value, (list, tuple)) else value
            for name, value in ((name, model_config[name]) for name in _UNET_SHAPE_FIELDS)}
  if kind.conditional:
    fields['num_prototypes'] = num_conditions  # classes or prototypes: the rows of the embedding or memory
  if null_class:
    fields['null_class'] = True
  if kind.prototype_memory or kind.class_prototypes:
    fields['prototype_dim'] = model_config.prototype_dim
    if uses_feature_queue(model_config):
      fields['prototype_queue_size'] = model_config.prototype_queue_size
  return fields


def uses_feature_queue(model_config: ml_collections.ConfigDict) -> bool:
  """Whether PDM balances its Sinkhorn assignment over a queue of recent features as well as the batch."""
  kind = kinds.get(model_config.type)
  return (kind.prototype_memory and not kind.class_conditional and model_config.prototype_assignment == 'sinkhorn'
          and model_config.prototype_queue_size > 0)


def check_prototype_settings(model_config: ml_collections.ConfigDict) -> None:
  """One-line ValueErrors for the prototype assignment settings."""
  if model_config.prototype_assignment not in prototypes_lib.ASSIGNMENTS:
    raise ValueError(f'model.prototype_assignment={model_config.prototype_assignment!r} is unknown: use one of '
                     f'{", ".join(prototypes_lib.ASSIGNMENTS)}.')
  if not model_config.sinkhorn_epsilon > 0:
    raise ValueError(f'model.sinkhorn_epsilon={model_config.sinkhorn_epsilon} must be > 0 (SwAV: 0.05).')
  if isinstance(model_config.sinkhorn_iters, bool) or model_config.sinkhorn_iters < 1:
    raise ValueError(f'model.sinkhorn_iters={model_config.sinkhorn_iters} must be an integer >= 1 (SwAV: 3).')
  if model_config.prototype_queue_size < 0:
    raise ValueError(f'model.prototype_queue_size={model_config.prototype_queue_size} must be >= 0 (0: no queue).')


def has_null_class(config: ml_collections.ConfigDict) -> bool:
  """Whether a run's model has a null class: trained with label dropout, for classifier-free guidance."""
  return config.train.get('label_dropout', 0.0) > 0


def build_model(model_config: ml_collections.ConfigDict, *, image_size: int, num_channels: int,
                num_classes: int | None, null_class: bool = False) -> pdm.DiffusionModel:
  """Returns the DiffusionModel for `model_config` on images of (image_size, image_size, num_channels).

  null_class (has_null_class(config)): an extra learned unconditional class for classifier-free guidance.
  """
  kind = kinds.get(model_config.type)
  if null_class and not kind.class_conditional:
    raise ValueError(f'train.label_dropout > 0 trains a null class for classifier-free guidance, but model.type='
                     f'{kind.name} is not class-conditional: set train.label_dropout=0.')
  # One prototype (or class embedding) per class for the class-conditional kinds; 0 for the unconditional one.
  num_prototypes = kind.num_conditions(model_config.num_prototypes, num_classes)
  unet_lib.check_unet_config(
      image_size=image_size,
      block_out_channels=tuple(model_config.block_out_channels),
      norm_num_groups=model_config.norm_num_groups,
      down_block_types=tuple(model_config.down_block_types),
      up_block_types=tuple(model_config.up_block_types))
  attention.check_attention_impl(model_config.attention_impl, model_config.attention_chunk_size)
  check_prototype_settings(model_config)
  if (kind.prototype_memory or kind.class_prototypes) and model_config.prototype_dim < 1:
    raise ValueError(f'model.prototype_dim={model_config.prototype_dim} must be >= 1 for model.type={kind.name}.')
  dtype = compute_dtype(model_config.dtype)
  bottleneck_channels = model_config.block_out_channels[-1]
  if kind.prototype_memory and bottleneck_channels % model_config.bottleneck_num_heads:
    raise ValueError(f'model.bottleneck_num_heads={model_config.bottleneck_num_heads} does not divide the '
                     f'bottleneck width {bottleneck_channels}: change either.')
  shapes = shape_fields(model_config, num_prototypes, null_class)
  unet_config = {name: shapes[name] for name in _UNET_SHAPE_FIELDS}
  unet_config.update({name: model_config[name] for name in _UNET_SETTINGS},
                     in_channels=num_channels, out_channels=num_channels, remat=bool(model_config.remat))
  return pdm.DiffusionModel(model_type=kind.name, unet_config=unet_config, num_prototypes=num_prototypes,
                            dtype=dtype, null_class=null_class,
                            **{name: model_config[name] for name in _PROTOTYPE_SETTINGS})

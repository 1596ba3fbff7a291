"""Builds the DiffusionModel a config asks for, checking the choices that would otherwise fail deep in flax."""

import jax.numpy as jnp
import ml_collections

from pdm_jax.models import attention
from pdm_jax.models import pdm
from pdm_jax.models import unet as unet_lib


# model.dtype -> compute dtype. float16 is left out: without loss scaling its gradients underflow.
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def compute_dtype(name: str):
  """The jnp dtype of model.dtype ('float32' | 'bfloat16'); a one-line ValueError otherwise."""
  if name not in DTYPES:
    raise ValueError(f'model.dtype={name!r} is not supported: use one of {", ".join(DTYPES)}.')
  return DTYPES[name]


def build_model(model_config: ml_collections.ConfigDict, *, image_size: int, num_channels: int,
                num_classes: int | None) -> pdm.DiffusionModel:
  """Returns the DiffusionModel for `model_config` on images of (image_size, image_size, num_channels)."""
  model_type = model_config.type
  if model_type not in pdm.MODEL_TYPES:
    raise ValueError(f'Unknown model.type={model_type!r}: use one of {", ".join(pdm.MODEL_TYPES)}.')
  if model_type in pdm.CLASS_CONDITIONAL_MODELS and not num_classes:
    raise ValueError(f'model.type={model_type} needs labels, but the dataset has none: '
                     'use a labelled dataset (data.use_labels=True) or model.type=pdm.')
  unet_lib.check_unet_config(
      image_size=image_size,
      block_out_channels=tuple(model_config.block_out_channels),
      norm_num_groups=model_config.norm_num_groups,
      down_block_types=tuple(model_config.down_block_types),
      up_block_types=tuple(model_config.up_block_types))
  attention.check_attention_impl(model_config.attention_impl, model_config.attention_chunk_size)
  dtype = compute_dtype(model_config.dtype)
  # One prototype (or class embedding) per class for the supervised models.
  num_prototypes = num_classes if model_type in pdm.CLASS_CONDITIONAL_MODELS else model_config.num_prototypes
  if model_type == 'pdm' and num_prototypes < 1:
    raise ValueError(f'model.num_prototypes={num_prototypes}: PDM needs at least one prototype.')
  bottleneck_channels = model_config.block_out_channels[-1]
  if model_type in pdm.PROTOTYPE_MODELS and bottleneck_channels % model_config.bottleneck_num_heads:
    raise ValueError(f'model.bottleneck_num_heads={model_config.bottleneck_num_heads} does not divide the '
                     f'bottleneck width {bottleneck_channels}: change either.')
  unet_config = dict(
      in_channels=num_channels,
      out_channels=num_channels,
      block_out_channels=tuple(model_config.block_out_channels),
      layers_per_block=model_config.layers_per_block,
      down_block_types=tuple(model_config.down_block_types),
      up_block_types=tuple(model_config.up_block_types),
      attention_head_dim=model_config.attention_head_dim,
      norm_num_groups=model_config.norm_num_groups,
      dropout=model_config.dropout,
      bottleneck_num_heads=model_config.bottleneck_num_heads,
      attention_impl=model_config.attention_impl,
      attention_chunk_size=model_config.attention_chunk_size,
      remat=bool(model_config.remat))
  return pdm.DiffusionModel(
      model_type=model_type,
      unet_config=unet_config,
      num_prototypes=num_prototypes or 0,
      prototype_dim=model_config.prototype_dim,
      tau=model_config.tau,
      alpha=model_config.alpha,
      beta=model_config.beta,
      dtype=dtype)

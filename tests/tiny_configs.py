"""Tiny configs that compile in seconds on a CPU (no torch import: command-line tests load this too)."""

from configs import default
from pdm_jax.models import kinds


def tiny_config(model_type: str = 'spdm', **train_overrides):
  """The default digits config shrunk to a UNet of width 8/16 so a train step compiles in seconds."""
  config = default.get_config()
  config.model.type = model_type
  config.model.block_out_channels = (8, 16)
  config.model.down_block_types = ('DownBlock2D', 'AttnDownBlock2D')
  config.model.up_block_types = ('AttnUpBlock2D', 'UpBlock2D')
  config.model.norm_num_groups = 4
  config.model.prototype_dim = 16
  config.data.use_labels = kinds.get(model_type).class_conditional
  config.protodiffusion.classifier_steps = 4
  config.diffusion.num_timesteps = 50
  config.train.batch_size = 16
  config.train.num_steps = 8
  config.train.warmup_steps = 2
  config.train.log_every = 4
  config.train.checkpoint_every = 4
  config.sample.num_samples = 12
  config.sample.batch_size = 12
  config.sample.num_steps = 5
  for key, value in train_overrides.items():
    setattr(config.train, key, value)
  return config

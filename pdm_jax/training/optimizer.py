"""AdamW with linear warmup, cosine decay and global-norm clipping (the reference's optimizer)."""

import ml_collections
import optax


def learning_rate_schedule(train_config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup from 0 to learning_rate, then cosine decay to end_learning_rate_factor * learning_rate."""
  peak = train_config.learning_rate
  warmup = min(train_config.warmup_steps, max(train_config.num_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup,
      decay_steps=max(train_config.num_steps, warmup + 1),
      end_value=peak * train_config.end_learning_rate_factor)


def make_optimizer(train_config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Clip by global norm, then AdamW (torch's defaults: b1 0.9, b2 0.999, eps 1e-8)."""
  return optax.chain(
      optax.clip_by_global_norm(train_config.grad_clip_norm),
      optax.adamw(learning_rate_schedule(train_config), weight_decay=train_config.weight_decay))

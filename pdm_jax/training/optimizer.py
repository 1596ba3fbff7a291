"""AdamW with linear warmup, cosine decay and global-norm clipping (the reference's optimizer); some top-level
parameters can be frozen (ProtoDiffusion's proto_frozen class centres)."""

from typing import Sequence

import jax
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


def make_optimizer(train_config: ml_collections.ConfigDict, frozen: Sequence[str] = ()
                   ) -> optax.GradientTransformation:
  """Clip by global norm, then AdamW (torch's defaults: b1 0.9, b2 0.999, eps 1e-8).

  frozen: names of top-level parameters that never change. Their update is exactly zero (weight decay included),
  and they are left out of the clipping norm, as torch leaves out a tensor with requires_grad=False.
  """
  tx = optax.chain(
      optax.clip_by_global_norm(train_config.grad_clip_norm),
      optax.adamw(learning_rate_schedule(train_config), weight_decay=train_config.weight_decay))
  if not frozen:
    return tx
  frozen = frozenset(frozen)

  def labels(params):
    missing = frozen - set(params)
    if missing:
      raise ValueError(f'cannot freeze {sorted(missing)}: the model has no such parameters (it has {sorted(params)}).')
    return {name: jax.tree.map(lambda _, n=name: 'frozen' if n in frozen else 'trained', subtree)
            for name, subtree in params.items()}

  return optax.multi_transform({'trained': tx, 'frozen': optax.set_to_zero()}, labels)

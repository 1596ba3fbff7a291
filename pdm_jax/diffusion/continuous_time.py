"""A continuous-time view of a discrete schedule, for solvers that step between training timesteps.

Knots are the training timesteps t = 0..T-1 plus t = -1 where alpha_bar = 1 (clean data). Between
knots, log(1 / alpha_bar) is linear in t, so integer t gives the table values exactly and the map to
sigma = sqrt((1 - alpha_bar) / alpha_bar) is monotone and invertible.
"""

import jax.numpy as jnp

from pdm_jax.diffusion.schedules import Schedule


def _knots(schedule: Schedule):
  dtype = schedule.alphas_cumprod.dtype  # float32, or float64 for a schedule cast up under x64.
  steps = jnp.arange(-1, schedule.num_timesteps).astype(dtype)
  log_inv_alpha_bar = jnp.concatenate([jnp.zeros((1,), dtype), -jnp.log(schedule.alphas_cumprod)])
  return steps, log_inv_alpha_bar


def alphas_cumprod_at(schedule: Schedule, t: jnp.ndarray) -> jnp.ndarray:
  """alpha_bar at timesteps t of any shape: table values for integer t (t = -1 gives 1), interpolated for float t."""
  t = jnp.asarray(t)
  if jnp.issubdtype(t.dtype, jnp.integer):
    return jnp.where(t >= 0, schedule.alphas_cumprod[jnp.maximum(t, 0)], 1.0)
  steps, log_inv = _knots(schedule)
  return jnp.exp(-jnp.interp(t, steps, log_inv))


def sigma_at(schedule: Schedule, t: jnp.ndarray) -> jnp.ndarray:
  """Noise-to-signal ratio sqrt((1 - alpha_bar) / alpha_bar) at timesteps t of any shape (0 at t = -1)."""
  t = jnp.asarray(t)
  if jnp.issubdtype(t.dtype, jnp.integer):
    alpha_bar = alphas_cumprod_at(schedule, t)
    return jnp.sqrt((1.0 - alpha_bar) / alpha_bar)
  steps, log_inv = _knots(schedule)
  # expm1 keeps sigma accurate near the data end, where 1 - alpha_bar is tiny.
  return jnp.sqrt(jnp.expm1(jnp.interp(t, steps, log_inv)))


def timestep_at_sigma(schedule: Schedule, sigma: jnp.ndarray) -> jnp.ndarray:
  """Float timestep in [-1, T-1] whose interpolated sigma equals `sigma` (any shape); inverse of sigma_at."""
  steps, log_inv = _knots(schedule)
  return jnp.interp(jnp.log1p(jnp.square(sigma)), log_inv, steps)


def alphas_cumprod_like(schedule: Schedule, t: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
  """alpha_bar at a scalar t or per-example t (N,), shaped to broadcast against x (N, H, W, C)."""
  alpha_bar = alphas_cumprod_at(schedule, t)
  if alpha_bar.ndim > 1 or (alpha_bar.ndim == 1 and alpha_bar.shape[0] != x.shape[0]):
    raise ValueError(f't must be a scalar or have shape ({x.shape[0]},), got {jnp.shape(t)}.')
  return alpha_bar.reshape(alpha_bar.shape + (1,) * (x.ndim - alpha_bar.ndim))

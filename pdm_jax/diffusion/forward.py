"""The forward process q(x_t | x_0) and its posterior q(x_{t-1} | x_t, x_0)."""

import jax.numpy as jnp

from pdm_jax.diffusion.schedules import Schedule


def extract(values: jnp.ndarray, t: jnp.ndarray, ndim: int) -> jnp.ndarray:
  """Gathers values[t] for integer t of shape (N,) and reshapes to (N, 1, ..., 1) with `ndim` axes."""
  t = jnp.asarray(t)
  if t.ndim != 1:
    raise ValueError(f't must have shape (N,), got {t.shape}; pass one timestep per example.')
  if not jnp.issubdtype(t.dtype, jnp.integer):
    raise ValueError(f't must be an integer timestep index, got dtype {t.dtype}; cast with astype(int32).')
  return values[t].reshape((t.shape[0],) + (1,) * (ndim - 1))


def _check_batch(x: jnp.ndarray, t: jnp.ndarray) -> None:
  if jnp.ndim(t) != 1 or x.shape[0] != jnp.shape(t)[0]:
    raise ValueError(f'x has batch {x.shape[:1]} but t has shape {jnp.shape(t)}; give t shape (N,).')


def q_sample(schedule: Schedule, x0: jnp.ndarray, t: jnp.ndarray, noise: jnp.ndarray) -> jnp.ndarray:
  """x_t = sqrt(a_bar_t) x0 + sqrt(1 - a_bar_t) noise; x0, noise (N, H, W, C), t int (N,)."""
  _check_batch(x0, t)
  if noise.shape != x0.shape:
    raise ValueError(f'noise shape {noise.shape} must equal x0 shape {x0.shape}.')
  return (extract(schedule.sqrt_alphas_cumprod, t, x0.ndim) * x0
          + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise)


def posterior_mean_variance(schedule: Schedule, x0: jnp.ndarray, x_t: jnp.ndarray, t: jnp.ndarray):
  """Mean (N, H, W, C), variance and log-variance (N, 1, 1, 1) of q(x_{t-1} | x_t, x0)."""
  _check_batch(x_t, t)
  if x0.shape != x_t.shape:
    raise ValueError(f'x0 shape {x0.shape} must equal x_t shape {x_t.shape}.')
  mean = (extract(schedule.posterior_mean_coef1, t, x_t.ndim) * x0
          + extract(schedule.posterior_mean_coef2, t, x_t.ndim) * x_t)
  variance = extract(schedule.posterior_variance, t, x_t.ndim)
  log_variance = extract(schedule.posterior_log_variance_clipped, t, x_t.ndim)
  return mean, variance, log_variance


def x0_from_eps(x_t: jnp.ndarray, eps: jnp.ndarray, alpha_bar: jnp.ndarray) -> jnp.ndarray:
  """The x0 that x_t = sqrt(a_bar) x0 + sqrt(1 - a_bar) eps implies; alpha_bar broadcasts to x_t (e.g. (N, 1, 1, 1))."""
  return (x_t - jnp.sqrt(1.0 - alpha_bar) * eps) / jnp.sqrt(alpha_bar)


def predict_x0_from_eps(schedule: Schedule, x_t: jnp.ndarray, t: jnp.ndarray, eps: jnp.ndarray) -> jnp.ndarray:
  """Inverts q_sample for x0 given the noise at integer timesteps t (N,); shapes (N, H, W, C)."""
  _check_batch(x_t, t)
  return x0_from_eps(x_t, eps, extract(schedule.alphas_cumprod, t, x_t.ndim))


def predict_eps_from_x0(schedule: Schedule, x_t: jnp.ndarray, t: jnp.ndarray, x0: jnp.ndarray) -> jnp.ndarray:
  """Inverts q_sample for the noise given x0: (x_t - sqrt(a_bar) x0) / sqrt(1 - a_bar); shapes (N, H, W, C)."""
  _check_batch(x_t, t)
  return ((x_t - extract(schedule.sqrt_alphas_cumprod, t, x_t.ndim) * x0)
          / extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t.ndim))

"""DDPM ancestral sampling (Ho et al. 2020), strided over a subset of timesteps like diffusers."""

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from pdm_jax.diffusion import Schedule
from pdm_jax.diffusion.continuous_time import alphas_cumprod_like
from pdm_jax.diffusion.forward import x0_from_eps
from pdm_jax.sampling.noise_predictor import evaluate
from pdm_jax.sampling.timesteps import previous_timesteps

VARIANCES = ('beta_tilde', 'beta')


def ddpm_step(schedule: Schedule, x_t: jnp.ndarray, eps: jnp.ndarray, t, t_prev, noise: jnp.ndarray,
              variance: str = 'beta_tilde', clip_denoised: bool = True) -> jnp.ndarray:
  """One ancestral step x_t -> x_{t_prev} (N, H, W, C); beta_t = 1 - a_t / a_prev as in diffusers' strided DDPM.

  `beta_tilde` is diffusers' 'fixed_small', `beta` its 'fixed_large'. Noise is added only when
  t_prev >= 0 (diffusers adds it when t > 0; the two agree for `leading` spacing).
  """
  if variance not in VARIANCES:
    raise ValueError(f'Unknown variance {variance!r}; use one of {VARIANCES}.')
  alpha_bar = alphas_cumprod_like(schedule, t, x_t)
  alpha_bar_prev = alphas_cumprod_like(schedule, t_prev, x_t)
  beta = 1.0 - alpha_bar / alpha_bar_prev
  x0 = x0_from_eps(x_t, eps, alpha_bar)
  if clip_denoised:
    x0 = jnp.clip(x0, -1.0, 1.0)
  # Posterior mean of q(x_prev | x_t, x0) for the strided chain.
  mean = (jnp.sqrt(alpha_bar_prev) * beta / (1.0 - alpha_bar) * x0
          + jnp.sqrt(1.0 - beta) * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar) * x_t)
  if variance == 'beta_tilde':
    var = jnp.maximum((1.0 - alpha_bar_prev) / (1.0 - alpha_bar) * beta, 1e-20)
  else:
    var = beta
  keep_noise = (jnp.asarray(t_prev) >= 0).reshape(alpha_bar_prev.shape)
  return mean + jnp.where(keep_noise, jnp.sqrt(var), 0.0) * noise


def ddpm_loop(eps_fn, schedule: Schedule, x: jnp.ndarray, rng, timesteps: np.ndarray, variance: str = 'beta_tilde',
              clip_denoised: bool = True, end_timestep: int = -1) -> jnp.ndarray:
  """Ancestral steps from x (N, H, W, C) at timesteps[0] to end_timestep (-1: data), one lax.scan; timesteps static."""
  keys = jax.random.split(rng, len(timesteps))

  def step(x_t, inputs):
    t, t_prev, key = inputs
    eps = evaluate(eps_fn, x_t, t)
    noise = jax.random.normal(key, x_t.shape, x_t.dtype)
    return ddpm_step(schedule, x_t, eps, t, t_prev, noise, variance, clip_denoised), None

  xs = (jnp.asarray(timesteps), jnp.asarray(previous_timesteps(timesteps, end_timestep)), keys)
  return lax.scan(step, x, xs)[0]

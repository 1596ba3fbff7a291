"""DDIM (Song et al. 2021): the deterministic transfer x_t -> x_s given a noise estimate, with optional eta noise."""

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from pdm_jax.diffusion import Schedule
from pdm_jax.diffusion.continuous_time import alphas_cumprod_like
from pdm_jax.diffusion.forward import x0_from_eps
from pdm_jax.sampling.noise_predictor import evaluate
from pdm_jax.sampling.timesteps import previous_timesteps


def transfer(x: jnp.ndarray, eps: jnp.ndarray, alpha_bar: jnp.ndarray, alpha_bar_next: jnp.ndarray) -> jnp.ndarray:
  """Deterministic DDIM move of x (N, H, W, C) from alpha_bar to alpha_bar_next, given eps (PNDM eq. 9).

  Algebraically sqrt(a'/a) x + (sqrt(1 - a') - sqrt(a'(1 - a)/a)) eps; this form factors out a' - a
  so that small steps do not lose precision to cancellation.
  """
  sqrt_a, sqrt_a_next = jnp.sqrt(alpha_bar), jnp.sqrt(alpha_bar_next)
  x_coef = 1.0 / (sqrt_a * (sqrt_a + sqrt_a_next))
  eps_coef = 1.0 / (sqrt_a * (jnp.sqrt((1.0 - alpha_bar_next) * alpha_bar)
                              + jnp.sqrt((1.0 - alpha_bar) * alpha_bar_next)))
  return x + (alpha_bar_next - alpha_bar) * (x_coef * x - eps_coef * eps)


def ddim_step(schedule: Schedule, x_t: jnp.ndarray, eps: jnp.ndarray, t, t_prev, noise=None, eta: float = 0.0,
              clip_denoised: bool = True) -> jnp.ndarray:
  """One DDIM step x_t -> x_{t_prev} (N, H, W, C), like diffusers' DDIMScheduler.step (t_prev = -1: alpha_bar 1).

  eta scales the stochastic part (0 = deterministic; `noise` may then be None). With clip_denoised the
  x0 estimate is clipped to [-1, 1] while eps is kept as predicted (diffusers' default).
  """
  alpha_bar = alphas_cumprod_like(schedule, t, x_t)
  alpha_bar_prev = alphas_cumprod_like(schedule, t_prev, x_t)
  x0 = x0_from_eps(x_t, eps, alpha_bar)
  if clip_denoised:
    x0 = jnp.clip(x0, -1.0, 1.0)
  deterministic = isinstance(eta, (int, float)) and eta == 0
  if deterministic:
    std = 0.0
  else:
    if noise is None:
      raise ValueError('ddim_step with eta > 0 needs `noise` of the shape of x_t.')
    std = eta * jnp.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar) * (1.0 - alpha_bar / alpha_bar_prev))
  x_prev = jnp.sqrt(alpha_bar_prev) * x0 + jnp.sqrt(jnp.maximum(1.0 - alpha_bar_prev - std ** 2, 0.0)) * eps
  if not deterministic:
    x_prev = x_prev + std * noise
  return x_prev


def ddim_loop(eps_fn, schedule: Schedule, x: jnp.ndarray, rng, timesteps: np.ndarray, eta: float = 0.0,
              clip_denoised: bool = True, end_timestep: int = -1) -> jnp.ndarray:
  """DDIM steps from x (N, H, W, C) at timesteps[0] to end_timestep (-1: data), one lax.scan; rng None ok if eta=0."""
  deterministic = isinstance(eta, (int, float)) and eta == 0
  # Deterministic runs need no key; scan still wants one entry per step.
  keys = jnp.zeros((len(timesteps),)) if deterministic else jax.random.split(rng, len(timesteps))

  def step(x_t, inputs):
    t, t_prev, key = inputs
    eps = evaluate(eps_fn, x_t, t)
    noise = None if deterministic else jax.random.normal(key, x_t.shape, x_t.dtype)
    return ddim_step(schedule, x_t, eps, t, t_prev, noise, eta, clip_denoised), None

  xs = (jnp.asarray(timesteps), jnp.asarray(previous_timesteps(timesteps, end_timestep)), keys)
  return lax.scan(step, x, xs)[0]

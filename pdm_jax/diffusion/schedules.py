"""Noise schedules: the betas of a discrete diffusion and every quantity derived from them."""

import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

SCHEDULE_NAMES = ('linear', 'quad', 'cosine')


class Schedule(NamedTuple):
  """Per-timestep float32 arrays of shape (T,); a NamedTuple, hence a pytree that jit can trace."""
  betas: jnp.ndarray
  alphas: jnp.ndarray
  alphas_cumprod: jnp.ndarray
  alphas_cumprod_prev: jnp.ndarray
  sqrt_alphas_cumprod: jnp.ndarray
  sqrt_one_minus_alphas_cumprod: jnp.ndarray
  posterior_variance: jnp.ndarray
  posterior_log_variance_clipped: jnp.ndarray
  posterior_mean_coef1: jnp.ndarray
  posterior_mean_coef2: jnp.ndarray

  @property
  def num_timesteps(self) -> int:
    """Number T of training timesteps (static: read from the array shape)."""
    return self.betas.shape[0]


def _cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  """Nichol & Dhariwal (2021) cosine schedule: betas from ratios of a squared-cosine alpha_bar."""
  def alpha_bar(u):
    return math.cos((u + s) / (1.0 + s) * math.pi / 2.0) ** 2
  steps = np.arange(num_timesteps, dtype=np.float64)
  betas = [1.0 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps) for i in steps]
  # The clip keeps the last step from destroying the signal with beta = 1 (alpha_bar(1) = 0).
  return np.minimum(np.asarray(betas, np.float64), max_beta)


def betas_to_schedule(betas) -> Schedule:
  """Builds a Schedule from betas of shape (T,); derived terms are computed in float64, stored float32."""
  betas = np.asarray(betas, np.float64)
  if betas.ndim != 1 or betas.shape[0] < 1:
    raise ValueError(f'betas must be a non-empty 1-D array, got shape {betas.shape}.')
  if np.any(betas <= 0.0) or np.any(betas >= 1.0):
    raise ValueError('betas must lie strictly inside (0, 1); fix beta_start/beta_end.')
  alphas = 1.0 - betas
  alphas_cumprod = np.cumprod(alphas)
  alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
  # beta_tilde of DDPM (Ho et al. 2020, eq. 7): variance of q(x_{t-1} | x_t, x_0).
  posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
  # posterior_variance[0] is 0; repeat entry 1 so the log stays finite (as in the DDPM code).
  if betas.shape[0] > 1:
    clipped = np.append(posterior_variance[1], posterior_variance[1:])
  else:
    clipped = np.maximum(posterior_variance, 1e-20)
  arrays = dict(
      betas=betas,
      alphas=alphas,
      alphas_cumprod=alphas_cumprod,
      alphas_cumprod_prev=alphas_cumprod_prev,
      sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
      sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
      posterior_variance=posterior_variance,
      posterior_log_variance_clipped=np.log(clipped),
      posterior_mean_coef1=betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
      posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
  )
  return Schedule(**{k: jnp.asarray(v, jnp.float32) for k, v in arrays.items()})


def make_schedule(name: str, num_timesteps: int, beta_start: float = 1e-4,
                  beta_end: float = 0.02) -> Schedule:
  """Schedule named `linear`, `quad` (diffusers 'scaled_linear') or `cosine`, with arrays of shape (T,)."""
  if name not in SCHEDULE_NAMES:
    raise ValueError(f'Unknown schedule {name!r}; use one of {SCHEDULE_NAMES}.')
  if not isinstance(num_timesteps, (int, np.integer)) or num_timesteps < 1:
    raise ValueError(f'num_timesteps must be a positive int, got {num_timesteps!r}.')
  if name == 'linear':
    betas = np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
  elif name == 'quad':
    betas = np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_timesteps, dtype=np.float64) ** 2
  else:
    betas = _cosine_betas(num_timesteps)
  return betas_to_schedule(betas)

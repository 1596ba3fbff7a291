"""The one public sampling call: noise -> images with any method, schedule and noise predictor."""

import jax
import jax.numpy as jnp
import numpy as np

from pdm_jax.diffusion import Schedule
from pdm_jax.sampling.ddim import ddim_loop
from pdm_jax.sampling.ddpm import ddpm_loop
from pdm_jax.sampling.ddpm import VARIANCES
from pdm_jax.sampling.fon import fon_loop
from pdm_jax.sampling.pndm import pndm_loop
from pdm_jax.sampling.pndm import pndm_num_evaluations
from pdm_jax.sampling.probability_flow import probability_flow_solve
from pdm_jax.sampling.timesteps import make_timesteps

METHODS = ('ddpm', 'ddim', 's-pndm', 'f-pndm', 'fon', 'pf')


def check_options(schedule, method: str, num_steps=None, eta: float = 0.0, variance: str = 'beta_tilde',
                  prefix: str = '') -> None:
  """Raises a one-line ValueError for options `sample` would refuse (to check them before a long run). `prefix`
  ('sample.' for a config's fields) names the setting to change in the message."""
  if not isinstance(schedule, Schedule):
    raise ValueError(f'schedule must be a pdm_jax.diffusion.Schedule, got {type(schedule).__name__}.')
  if method not in METHODS:
    setting = f'{prefix}method=' if prefix else ''
    raise ValueError(f'Unknown sampling method {setting}{method!r}; use one of {METHODS}.')
  total = schedule.num_timesteps
  if num_steps is not None and (not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= total):
    raise ValueError(f'{prefix}num_steps must be an int in [1, {total}] (the schedule length) or None, got '
                     f'{num_steps!r}.')
  if variance not in VARIANCES:
    raise ValueError(f'Unknown {prefix}variance {variance!r}; use one of {VARIANCES}.')
  if isinstance(eta, (int, float)) and eta < 0:
    raise ValueError(f'{prefix}eta must be >= 0 (0 = deterministic DDIM, 1 = DDPM-like), got {eta}.')


def sample_from_noise(eps_fn, schedule: Schedule, x_T: jnp.ndarray, rng=None, method: str = 'ddpm',
                      num_steps=None, *, timestep_spacing: str = 'leading', eta: float = 0.0,
                      variance: str = 'beta_tilde', clip_denoised: bool = True, return_nfe: bool = False,
                      ode_rtol: float = 1e-5, ode_atol: float = 1e-5):
  """Denoises a given x_T (N, H, W, C) like `sample`, keeping its dtype; x_T sits at timesteps[0] (pf: T-1).

  rng may be None unless the method draws noise (ddpm, ddim with eta > 0).
  """
  check_options(schedule, method, num_steps, eta, variance)
  if not hasattr(x_T, 'dtype') or not jnp.issubdtype(x_T.dtype, jnp.floating) or x_T.ndim < 1:
    raise ValueError('x_T must be a floating-point array of shape (N, ...), e.g. jax.random.normal(rng, shape).')
  needs_rng = method == 'ddpm' or (method == 'ddim' and not (isinstance(eta, (int, float)) and eta == 0))
  if needs_rng and rng is None:
    raise ValueError(f'method {method!r} draws noise at every step; pass an rng key.')
  if rng is None:
    rng = jax.random.PRNGKey(0)
  steps = schedule.num_timesteps if num_steps is None else int(num_steps)
  timesteps = make_timesteps(schedule.num_timesteps, steps, timestep_spacing)
  nfe = steps
  if method == 'ddpm':
    x0 = ddpm_loop(eps_fn, schedule, x_T, rng, timesteps, variance, clip_denoised)
  elif method == 'ddim':
    x0 = ddim_loop(eps_fn, schedule, x_T, rng, timesteps, eta, clip_denoised)
  else:
    if method in ('s-pndm', 'f-pndm'):
      x0 = pndm_loop(eps_fn, schedule, x_T, timesteps, method)
      nfe = pndm_num_evaluations(steps, method)
    elif method == 'fon':
      x0 = fon_loop(eps_fn, schedule, x_T, timesteps)
      nfe = 4 * steps
    else:
      x0, nfe = probability_flow_solve(eps_fn, schedule, x_T, ode_rtol, ode_atol)
    if clip_denoised:
      # ODE methods have no x0 estimate to clip per step; clip the result to the data range instead.
      x0 = jnp.clip(x0, -1.0, 1.0)
  if return_nfe:
    return x0, jnp.asarray(nfe, jnp.int32)
  return x0


def sample(eps_fn, schedule: Schedule, shape, rng, method: str = 'ddpm', num_steps=None, *,
           timestep_spacing: str = 'leading', eta: float = 0.0, variance: str = 'beta_tilde',
           clip_denoised: bool = True, return_nfe: bool = False, ode_rtol: float = 1e-5, ode_atol: float = 1e-5):
  """Draws x_T ~ N(0, I) of `shape` (N, H, W, C) and denoises it; returns float32 x0 (and the eps_fn call count).

  eps_fn(x_t, t) predicts the noise; t is int32 (N,) for ddpm/ddim/pndm and float32 for fon/pf (which step
  between training timesteps). RK stages that end at the data (fon, pf, and s-/f-pndm with <= 1 / 3 steps)
  call it at t = -1 (alpha_bar = 1), which sinusoidal embeddings accept.
  `method` is one of METHODS; `num_steps` in [1, T] (None = T; ignored by the adaptive `pf`, which takes
  ode_rtol/ode_atol). `timestep_spacing` defaults to diffusers' `leading`, which starts at
  (n-1) * (T // n) < T-1 when n < T. `trailing`/`linspace` start at T-1; with a cosine schedule alpha_bar(T-1)
  is ~1e-9 (its clipped last beta) and the first RK warm-up step of f-pndm (and s-pndm) is then unstable
  for few steps: keep `leading` there. `eta` is DDIM's noise level, `variance` DDPM's ('beta_tilde' | 'beta').
  clip_denoised clips x0 estimates (ddpm, ddim) or the result (others) to [-1, 1].
  Jit-able with eps_fn closing over traced params; shape, method and num_steps must be static.
  """
  if not isinstance(shape, (tuple, list)) or len(shape) < 1 or not all(
      isinstance(d, (int, np.integer)) and d > 0 for d in shape):
    raise ValueError(f'shape must be a tuple of positive ints like (N, H, W, C), got {shape!r}.')
  check_options(schedule, method, num_steps, eta, variance)
  noise_rng, loop_rng = jax.random.split(rng)
  x_T = jax.random.normal(noise_rng, tuple(shape), jnp.float32)
  return sample_from_noise(eps_fn, schedule, x_T, loop_rng, method, num_steps, timestep_spacing=timestep_spacing,
                           eta=eta, variance=variance, clip_denoised=clip_denoised, return_nfe=return_nfe,
                           ode_rtol=ode_rtol, ode_atol=ode_atol)

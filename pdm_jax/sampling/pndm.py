"""Pseudo numerical methods (PNDM, Liu et al. ICLR 2022): linear multistep on the DDIM transfer.

S-PNDM: one pseudo improved-Euler step, then the 2-step pseudo linear multistep (AB2 on eps).
F-PNDM: three pseudo Runge-Kutta (RK4) steps, then the 4-step pseudo linear multistep (AB4 on eps).
Each step combines noise estimates and moves x with `transfer`, the exact DDIM map, instead of an
Euler update. The RK midpoint is the integer (t + t_next) // 2, diffusers' PRK midpoint (the PNDM code
feeds the network the unrounded value and reads alpha_bar at the rounded one); eps_fn gets int32 t.
"""

from jax import lax
import jax.numpy as jnp
import numpy as np

from pdm_jax.diffusion import Schedule
from pdm_jax.diffusion.continuous_time import alphas_cumprod_at
from pdm_jax.sampling.ddim import transfer
from pdm_jax.sampling.noise_predictor import evaluate
from pdm_jax.sampling.timesteps import previous_timesteps

# Per variant: warm-up steps, warm-up stage weights, multistep weights on (newest, ..., oldest) eps.
_VARIANTS = {
    's-pndm': (1, (1 / 2, 1 / 2), (3 / 2, -1 / 2)),
    'f-pndm': (3, (1 / 6, 1 / 3, 1 / 3, 1 / 6), (55 / 24, -59 / 24, 37 / 24, -9 / 24)),
}
_MAX_STAGES = 4


def _stage_tables(timesteps: np.ndarray, variant: str, end_timestep: int):
  """Static per-step tables: stage times (n, 4), stage weights (n, 4), stage counts (n,), warm-up flags (n,)."""
  warmup_steps, warm_weights, _ = _VARIANTS[variant]
  prev = previous_timesteps(timesteps, end_timestep)
  mid = (timesteps + prev) // 2
  n = len(timesteps)
  times = np.repeat(prev[:, None], _MAX_STAGES, axis=1)
  weights = np.zeros((n, _MAX_STAGES), np.float32)
  is_warm = np.arange(n) < warmup_steps
  counts = np.where(is_warm, len(warm_weights), 1).astype(np.int32)
  for i in range(n):
    if not is_warm[i]:
      stage_times = [timesteps[i]]
      weights[i, 0] = 1.0
    else:
      # Improved Euler evaluates at t and t_next; RK4 at t, mid, mid, t_next.
      stage_times = [timesteps[i], prev[i]] if variant == 's-pndm' else [timesteps[i], mid[i], mid[i], prev[i]]
      weights[i, :len(warm_weights)] = warm_weights
    times[i, :len(stage_times)] = stage_times
  return times.astype(np.int32), weights, counts, is_warm


def pndm_num_evaluations(num_steps: int, variant: str) -> int:
  """Network evaluations of S-/F-PNDM with `num_steps` steps: warm-up steps cost 2 or 4, the others 1."""
  warmup_steps, warm_weights, _ = _VARIANTS[variant]
  warm = min(warmup_steps, num_steps)
  return warm * len(warm_weights) + (num_steps - warm)


def pndm_loop(eps_fn, schedule: Schedule, x: jnp.ndarray, timesteps: np.ndarray, variant: str,
              end_timestep: int = -1) -> jnp.ndarray:
  """S-/F-PNDM from x (N, H, W, C) at timesteps[0] to end_timestep (-1: data), one lax.scan; timesteps static."""
  if variant not in _VARIANTS:
    raise ValueError(f'Unknown PNDM variant {variant!r}; use one of {tuple(_VARIANTS)}.')
  _, _, multistep_weights = _VARIANTS[variant]
  history_len = len(multistep_weights) - 1
  times, weights, counts, is_warm = _stage_tables(timesteps, variant, end_timestep)

  def step(carry, inputs):
    x_t, history = carry
    t, t_next, stage_times, stage_weights, num_stages, warm = inputs
    alpha_bar = alphas_cumprod_at(schedule, t)

    def stage(s, state):
      x_in, combined, first = state
      eps = evaluate(eps_fn, x_in, stage_times[s])
      combined = combined + stage_weights[s] * eps
      first = jnp.where(s == 0, eps, first)
      # Each pseudo-RK stage restarts from x_t and moves it with the latest estimate.
      x_in = transfer(x_t, eps, alpha_bar, alphas_cumprod_at(schedule, stage_times[jnp.minimum(s + 1, 3)]))
      return x_in, combined, first

    zeros = jnp.zeros_like(x_t)
    _, combined, newest = lax.fori_loop(0, num_stages, stage, (x_t, zeros, zeros))
    multistep = multistep_weights[0] * newest
    for k in range(history_len):
      multistep = multistep + multistep_weights[k + 1] * history[k]
    eps = jnp.where(warm, combined, multistep)
    history = jnp.concatenate([newest[None], history[:-1]], axis=0)
    return (transfer(x_t, eps, alpha_bar, alphas_cumprod_at(schedule, t_next)), history), None

  history = jnp.zeros((history_len,) + x.shape, x.dtype)
  xs = (jnp.asarray(timesteps), jnp.asarray(previous_timesteps(timesteps, end_timestep)), jnp.asarray(times),
        jnp.asarray(weights, x.dtype), jnp.asarray(counts), jnp.asarray(is_warm))
  return lax.scan(step, (x, history), xs)[0][0]

"""FON: the classical fourth-order Runge-Kutta method on the probability-flow (DDIM) ODE.

With sigma = sqrt((1 - a) / a) and u = asinh(sigma) the ODE reads dx/du = eps(x, t) - sqrt(1 - a) x:
bounded coefficients, smooth down to the data (u = 0), where the same ODE in t is singular, and
logarithmic in sigma at the noise end, where sigma spans orders of magnitude. Classical RK4 applies;
unlike PNDM nothing is exact about the linear part. Midpoints fall between training timesteps, so
eps_fn is called with float t (see `pdm_jax/diffusion/continuous_time.py`).
"""

from jax import lax
import jax.numpy as jnp
import numpy as np

from pdm_jax.diffusion import Schedule
from pdm_jax.diffusion.continuous_time import sigma_at
from pdm_jax.diffusion.continuous_time import timestep_at_sigma
from pdm_jax.sampling.noise_predictor import evaluate
from pdm_jax.sampling.timesteps import previous_timesteps

_NODES = (0.0, 0.5, 0.5, 1.0)
_WEIGHTS = (1 / 6, 1 / 3, 1 / 3, 1 / 6)


def flow_derivative(eps_fn, x: jnp.ndarray, u, t) -> jnp.ndarray:
  """dx/du of the probability-flow ODE at x (N, H, W, C), scalar u = asinh(sigma) and its (float) timestep t."""
  return evaluate(eps_fn, x, t) - jnp.tanh(u) * x


def fon_loop(eps_fn, schedule: Schedule, x: jnp.ndarray, timesteps: np.ndarray,
             end_timestep: int = -1) -> jnp.ndarray:
  """RK4 steps (in u) between consecutive timesteps, x (N, H, W, C) to end_timestep (-1: data), one lax.scan."""
  u = jnp.arcsinh(sigma_at(schedule, jnp.asarray(timesteps)))
  u_next = jnp.arcsinh(sigma_at(schedule, jnp.asarray(previous_timesteps(timesteps, end_timestep))))
  u_mid = 0.5 * (u + u_next)
  # Knot timesteps stay exact; only the midpoint needs the interpolated inverse.
  stage_us = jnp.stack([u, u_mid, u_mid, u_next], axis=1)
  dtype = u_mid.dtype
  t_mid = timestep_at_sigma(schedule, jnp.sinh(u_mid))
  stage_times = jnp.stack([jnp.asarray(timesteps, dtype), t_mid, t_mid,
                           jnp.asarray(previous_timesteps(timesteps, end_timestep), dtype)], axis=1)
  nodes, weights = jnp.asarray(_NODES, x.dtype), jnp.asarray(_WEIGHTS, x.dtype)

  def step(x_t, inputs):
    us, times = inputs
    h = us[3] - us[0]

    def stage(s, state):
      slope, total = state
      slope = flow_derivative(eps_fn, x_t + nodes[s] * h * slope, us[s], times[s])
      return slope, total + weights[s] * slope

    zeros = jnp.zeros_like(x_t)
    _, total = lax.fori_loop(0, 4, stage, (zeros, zeros))
    return x_t + h * total, None

  return lax.scan(step, x, (stage_us.astype(x.dtype), stage_times))[0]

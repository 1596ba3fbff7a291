"""Probability-flow ODE of the VP SDE, solved with an adaptive Dormand-Prince 5(4) method in JAX.

The ODE is integrated in u = asinh(sigma) (see `fon.flow_derivative`) from u(T-1) down to 0, with one
step size shared by the whole batch and error control in the RMS norm of Hairer et al. In sigma itself
(up to ~2e4 at the end of a cosine schedule) large steps can skip the region near the data unnoticed.
"""

from jax import lax
import jax.numpy as jnp

from pdm_jax.diffusion import Schedule
from pdm_jax.diffusion.continuous_time import sigma_at
from pdm_jax.diffusion.continuous_time import timestep_at_sigma
from pdm_jax.sampling.fon import flow_derivative

# Dormand-Prince tableau: nodes, stage matrix rows, 5th-order weights (= last row, FSAL), 4th-order weights.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)


def probability_flow_solve(eps_fn, schedule: Schedule, x: jnp.ndarray, rtol: float = 1e-5, atol: float = 1e-5,
                           max_steps: int = 4096):
  """Integrates x (N, H, W, C) from t = T-1 to clean data; returns (x0, number of eps_fn evaluations int32).

  If the step controller does not reach the data within max_steps attempts (or breaks down on a non-finite
  network output), x0 is all NaN rather than a silently unfinished state: callers check samples for finiteness.
  """
  if not (rtol > 0 and atol > 0):
    raise ValueError(f'ode_rtol and ode_atol must be positive, got {rtol}, {atol}.')

  def derivative(u, y):
    return flow_derivative(eps_fn, y, u, timestep_at_sigma(schedule, jnp.sinh(u)))

  tableau = jnp.asarray([list(row) + [0.0] * (7 - len(row)) for row in _A], x.dtype)
  nodes = jnp.asarray(_C, x.dtype)
  weights5 = jnp.asarray(_B5, x.dtype)
  weights_error = jnp.asarray(_B5, x.dtype) - jnp.asarray(_B4, x.dtype)

  def attempt(u, y, slope, h):
    # Stages in a fori_loop rather than unrolled, so the network is traced once, not six times.
    def stage(i, slopes):
      y_stage = y + h * jnp.tensordot(tableau[i], slopes, axes=1)
      return slopes.at[i].set(derivative(u + nodes[i] * h, y_stage))

    slopes = jnp.zeros((7,) + y.shape, y.dtype).at[0].set(slope)
    slopes = lax.fori_loop(1, 7, stage, slopes)
    y_new = y + h * jnp.tensordot(weights5, slopes, axes=1)
    error = h * jnp.tensordot(weights_error, slopes, axes=1)
    scale = atol + rtol * jnp.maximum(jnp.abs(y), jnp.abs(y_new))
    ratio = jnp.sqrt(jnp.mean(jnp.square(error / scale)))
    return y_new, slopes[6], ratio

  def cond(state):
    u, _, _, _, _, steps = state
    return (u > 0) & (steps < max_steps)

  def body(state):
    u, y, slope, h, nfe, steps = state
    h = jnp.maximum(h, -u)  # h < 0: never step past u = 0.
    y_new, slope_new, ratio = attempt(u, y, slope, h)
    accept = ratio <= 1.0
    # Standard controller: safety 0.9, exponent 1/5, growth limited to [0.2, 5].
    factor = jnp.clip(0.9 * jnp.power(jnp.maximum(ratio, 1e-10), -0.2), 0.2, 5.0)
    u = jnp.where(accept, jnp.where(h == -u, 0.0, u + h), u)
    y = jnp.where(accept, y_new, y)
    slope = jnp.where(accept, slope_new, slope)
    return u, y, slope, h * factor, nfe + 6, steps + 1

  u_max = jnp.arcsinh(sigma_at(schedule, jnp.asarray(schedule.num_timesteps - 1))).astype(x.dtype)
  slope = derivative(u_max, x)
  # First trial step: 5% of the range; the controller corrects it within a few attempts.
  state = (u_max, x, slope, -0.05 * u_max, jnp.asarray(1, jnp.int32), jnp.asarray(0, jnp.int32))
  u_end, x0, _, _, nfe, _ = lax.while_loop(cond, body, state)
  return jnp.where(u_end > 0, jnp.nan, x0), nfe

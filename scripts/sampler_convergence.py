"""Convergence order of DDIM, S-PNDM, F-PNDM and FON against the exact probability-flow ODE solution.

For data N(mu, s^2) the optimal eps is affine in x, and the flow in y = x / sqrt(a), sigma = sqrt((1 - a) / a)
is dy/dsigma = eps = sigma (y - mu) / (s^2 + sigma^2), solved by y - mu ∝ sqrt(s^2 + sigma^2). So the
deterministic samplers' target is x_0 = mu + (x_T / sqrt(a_T) - mu) s / sqrt(s^2 + sigma_T^2).

All runs start at t = 959 and take uniform strides h = 960 / n (even, so RK midpoints are integer
timesteps) down to t = -1 (alpha_bar = 1); computations in float64 so that the error is not float32
rounding. A second table stops one step early, at t = h - 1: near t = -1 the noise eps ∝ sigma(t) ∝
sqrt(t + 1) is not smooth in t, which caps the order of the t-grid multistep methods on the final step.

Run: python scripts/sampler_convergence.py [--schedules linear,cosine] [--steps 5,10,20,40,80,160]
"""

import argparse
import json

import jax

jax.config.update('jax_enable_x64', True)

import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

import os
import sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run without installing

from pdm_jax import diffusion  # pylint: disable=g-import-not-at-top
from pdm_jax import sampling  # pylint: disable=g-import-not-at-top
from pdm_jax.sampling.ddim import ddim_loop  # pylint: disable=g-import-not-at-top
from pdm_jax.sampling.fon import fon_loop  # pylint: disable=g-import-not-at-top
from pdm_jax.sampling.pndm import pndm_loop  # pylint: disable=g-import-not-at-top

MU, STD = 0.3, 0.5
START = 959
METHODS = ('ddim', 's-pndm', 'f-pndm', 'fon')


def run_method(method, eps_fn, schedule, x_start, timesteps, end):
  """x at timestep `end` of one deterministic method started from x_start at timesteps[0] (float64)."""
  if method == 'ddim':
    return ddim_loop(eps_fn, schedule, x_start, None, timesteps, 0.0, clip_denoised=False, end_timestep=end)
  if method == 'fon':
    return fon_loop(eps_fn, schedule, x_start, timesteps, end_timestep=end)
  return pndm_loop(eps_fn, schedule, x_start, timesteps, method, end_timestep=end)


def exact_flow(schedule, x_start, t_start, t_end):
  """Closed-form probability-flow map of Gaussian data from t_start to t_end (t_end = -1: alpha_bar = 1)."""
  alpha_start = schedule.alphas_cumprod[t_start]
  alpha_end = schedule.alphas_cumprod[t_end] if t_end >= 0 else 1.0
  var_start, var_end = (1 - alpha_start) / alpha_start, (1 - alpha_end) / alpha_end
  y_end = MU + (x_start / jnp.sqrt(alpha_start) - MU) * jnp.sqrt((STD ** 2 + var_end) / (STD ** 2 + var_start))
  return jnp.sqrt(alpha_end) * y_end


def print_table(title, steps_list, errors):
  print(title)
  print('steps  ' + ''.join(f'{m:>12}' for m in METHODS))
  for i, n in enumerate(steps_list):
    print(f'{n:5d}  ' + ''.join(f'{errors[m][i]:12.3e}' for m in METHODS))
  print('order  ' + ''.join(f'{fitted_order(steps_list, errors[m]):12.2f}' for m in METHODS) + '   (all points)')
  tail = slice(-3, None)
  print('order  ' + ''.join(f'{fitted_order(steps_list[tail], errors[m][tail]):12.2f}' for m in METHODS)
        + '   (last 3 points)')


def fitted_order(steps, errors):
  """Least-squares slope of -log(error) against log(steps)."""
  return float(-np.polyfit(np.log(steps), np.log(errors), 1)[0])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--schedules', default='linear,cosine')
  parser.add_argument('--steps', default='5,10,20,40,80,160')
  args = parser.parse_args()
  steps_list = [int(s) for s in args.steps.split(',')]
  if any((START + 1) % n or ((START + 1) // n) % 2 for n in steps_list):
    raise ValueError(f'each step count must divide {START + 1} into an even stride; e.g. 5,10,20,40,80,160.')

  for name in args.schedules.split(','):
    schedule = jax.tree.map(lambda a: a.astype(jnp.float64), diffusion.make_schedule(name, 1000))

    def eps_fn(x, t, schedule=schedule):
      alpha_bar = sampling.alphas_cumprod_at(schedule, t)[:, None, None, None]
      return jnp.sqrt(1 - alpha_bar) * (x - jnp.sqrt(alpha_bar) * MU) / (alpha_bar * STD ** 2 + 1 - alpha_bar)

    alpha_start = schedule.alphas_cumprod[START]
    z = jax.random.normal(jax.random.PRNGKey(0), (64, 1, 1, 1), jnp.float64)
    x_start = jnp.sqrt(alpha_start) * MU + jnp.sqrt(alpha_start * STD ** 2 + 1 - alpha_start) * z

    for stop_early in (False, True):
      errors = {m: [] for m in METHODS}
      for n in steps_list:
        stride = (START + 1) // n
        timesteps = np.arange(START, -1, -stride).astype(np.int32)
        end = -1
        if stop_early:
          timesteps, end = timesteps[:-1], stride - 1
        exact = exact_flow(schedule, x_start, START, end)
        for method in METHODS:
          x_end = run_method(method, eps_fn, schedule, x_start, timesteps, end)
          errors[method].append(float(jnp.sqrt(jnp.mean(jnp.square(x_end - exact)))))
      where = ('t = stride - 1, skipping the last of the n steps' if stop_early
               else 't = -1 (alpha_bar = 1, the data)')
      print_table(f'\nschedule={name}  T=1000  n steps of stride 960/n from t={START} to {where}\n'
                  'RMS error vs the exact ODE solution', steps_list, errors)

    # The adaptive PF solver: error against NFE for a few tolerances (it starts at T-1, so its exact
    # target is recomputed from there).
    alpha_top = schedule.alphas_cumprod[999]
    x_top = jnp.sqrt(alpha_top) * MU + jnp.sqrt(alpha_top * STD ** 2 + 1 - alpha_top) * z
    exact_top = exact_flow(schedule, x_top, 999, -1)
    for tol in (1e-3, 1e-5, 1e-7):
      x0, nfe = sampling.sample_from_noise(eps_fn, schedule, x_top, None, 'pf', clip_denoised=False,
                                           return_nfe=True, ode_rtol=tol, ode_atol=tol)
      error = float(jnp.sqrt(jnp.mean(jnp.square(x0 - exact_top))))
      print(json.dumps({'schedule': name, 'method': 'pf', 'tolerance': tol, 'nfe': int(nfe), 'rms_error': error}))


if __name__ == '__main__':
  main()

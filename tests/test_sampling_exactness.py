"""Every sampler against a known answer: Gaussian data N(mu, s^2) has the closed-form optimal eps.

eps*(x_t, t) = sqrt(1 - a_t) (x_t - sqrt(a_t) mu) / (a_t s^2 + 1 - a_t). Deterministic methods start from
the exact marginal at their first timestep, with standardised noise, so the mean/std errors below are
the methods' own discretisation errors (no sampling noise). Tolerances (|std error|, T = 1000, leading
spacing; measured errors are about half of these):

  method   steps   linear   cosine        method   steps   linear   cosine
  ddim     10      0.15     0.09          f-pndm   10      0.008    0.005
  ddim     20      0.08     0.05          f-pndm   20      0.004    0.0015
  ddim     50      0.035    0.02          f-pndm   50      0.001    4e-4
  s-pndm   10      0.07     0.025         fon      10      5e-4     6e-5
  s-pndm   20      0.025    0.006         fon      20      3e-5     1.5e-5
  s-pndm   50      0.004    0.0012        fon      50      2e-6     3e-6
  pf (adaptive, default rtol = atol = 1e-5): 2e-4 (measured 8e-5 linear, 2e-6 cosine; 70-120 evaluations).
  The mean error is below 1e-5 for the pseudo methods (exact for affine eps) and 5e-5 for fon and pf.
  ddpm 1000 steps: the empirical moments match the exact moments of the ancestral chain within 4 standard
  errors; that chain's own std bias is -0.004 (linear) / -0.002 (cosine) with beta_tilde.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdm_jax import diffusion
from pdm_jax import sampling

MU, STD = 0.3, 0.5
STD_TOLERANCE = {
    ('linear', 'ddim'): (0.15, 0.08, 0.035), ('cosine', 'ddim'): (0.09, 0.05, 0.02),
    ('linear', 's-pndm'): (0.07, 0.025, 0.004), ('cosine', 's-pndm'): (0.025, 0.006, 0.0012),
    ('linear', 'f-pndm'): (0.008, 0.004, 0.001), ('cosine', 'f-pndm'): (0.005, 0.0015, 4e-4),
    ('linear', 'fon'): (5e-4, 3e-5, 2e-6), ('cosine', 'fon'): (6e-5, 1.5e-5, 3e-6),
}
STEPS = (10, 20, 50)


def gaussian_eps_fn(schedule):
  """Optimal noise predictor for N(MU, STD^2) data; accepts int or float t (N,)."""
  def eps_fn(x, t):
    alpha_bar = sampling.alphas_cumprod_at(schedule, t)[:, None, None, None]
    return jnp.sqrt(1 - alpha_bar) * (x - jnp.sqrt(alpha_bar) * MU) / (alpha_bar * STD ** 2 + 1 - alpha_bar)
  return eps_fn


def marginal_start(schedule, t, shape=(512, 1, 1, 1)):
  """Exact marginal of x_t with standardised noise, so sample moments are exact."""
  z = jax.random.normal(jax.random.PRNGKey(1), shape)
  z = (z - z.mean()) / z.std()
  alpha_bar = schedule.alphas_cumprod[t]
  return jnp.sqrt(alpha_bar) * MU + jnp.sqrt(alpha_bar * STD ** 2 + 1 - alpha_bar) * z


@pytest.fixture(scope='module', params=['linear', 'cosine'])
def schedule_name(request):
  return request.param


@pytest.mark.parametrize('method', ['ddim', 's-pndm', 'f-pndm', 'fon'])
def test_deterministic_methods_reproduce_gaussian(schedule_name, method):
  schedule = diffusion.make_schedule(schedule_name, 1000)
  errors = []
  for steps, tolerance in zip(STEPS, STD_TOLERANCE[(schedule_name, method)]):
    start = int(sampling.make_timesteps(1000, steps, 'leading')[0])
    x0 = sampling.sample_from_noise(gaussian_eps_fn(schedule), schedule, marginal_start(schedule, start), None,
                                    method, steps, clip_denoised=False)
    mean_error, std_error = float(x0.mean()) - MU, float(x0.std()) - STD
    assert abs(std_error) <= tolerance, (steps, std_error)
    assert abs(mean_error) <= (5e-5 if method == 'fon' else 1e-5), (steps, mean_error)
    errors.append(abs(std_error))
  assert errors[-1] < errors[0]


def test_probability_flow_reproduces_gaussian(schedule_name):
  schedule = diffusion.make_schedule(schedule_name, 1000)
  x0, nfe = sampling.sample_from_noise(gaussian_eps_fn(schedule), schedule, marginal_start(schedule, 999), None,
                                       'pf', clip_denoised=False, return_nfe=True)
  assert abs(float(x0.mean()) - MU) < 5e-5 and abs(float(x0.std()) - STD) < 2e-4
  assert 20 < int(nfe) < 300


def ddpm_exact_moments(schedule, timesteps, variance):
  """Mean and std of the strided ancestral chain's output, propagated exactly in float64."""
  alphas_cumprod = np.asarray(schedule.alphas_cumprod, np.float64)
  a0 = alphas_cumprod[timesteps[0]]
  mean, var = np.sqrt(a0) * MU, a0 * STD ** 2 + 1 - a0
  for t, t_prev in zip(timesteps, np.append(timesteps[1:], -1)):
    a, a_prev = alphas_cumprod[t], (alphas_cumprod[t_prev] if t_prev >= 0 else 1.0)
    beta = 1 - a / a_prev
    eps_gain = np.sqrt(1 - a) / (a * STD ** 2 + 1 - a)  # eps* = eps_gain (x - sqrt(a) MU)
    x0_gain, x0_shift = (1 - np.sqrt(1 - a) * eps_gain) / np.sqrt(a), np.sqrt(1 - a) * eps_gain * MU
    coef_x0, coef_xt = np.sqrt(a_prev) * beta / (1 - a), np.sqrt(1 - beta) * (1 - a_prev) / (1 - a)
    gain = coef_x0 * x0_gain + coef_xt
    noise_var = 0.0 if t_prev < 0 else ((1 - a_prev) / (1 - a) * beta if variance == 'beta_tilde' else beta)
    mean, var = gain * mean + coef_x0 * x0_shift, gain ** 2 * var + noise_var
  return mean, np.sqrt(var)


@pytest.mark.parametrize('variance,steps', [('beta_tilde', 1000), ('beta', 1000), ('beta_tilde', 100)])
def test_ddpm_matches_exact_chain_moments(schedule_name, variance, steps):
  schedule = diffusion.make_schedule(schedule_name, 1000)
  timesteps = sampling.make_timesteps(1000, steps, 'leading')
  n = 16384
  x0 = sampling.sample_from_noise(gaussian_eps_fn(schedule), schedule,
                                  marginal_start(schedule, int(timesteps[0]), (n, 1, 1, 1)),
                                  jax.random.PRNGKey(3), 'ddpm', steps, variance=variance, clip_denoised=False)
  mean, std = ddpm_exact_moments(schedule, timesteps, variance)
  assert abs(float(x0.mean()) - mean) < 4 * std / np.sqrt(n)
  assert abs(float(x0.std()) - std) < 4 * std / np.sqrt(2 * n)
  if steps == 1000:
    assert abs(mean - MU) < 1e-6 and abs(std - STD) < 0.005

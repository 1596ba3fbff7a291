"""Schedules against their closed forms and against diffusers' DDPMScheduler."""

import math

import numpy as np
import pytest

from pdm_jax import diffusion


@pytest.mark.parametrize('name', diffusion.SCHEDULE_NAMES)
def test_derived_quantities_match_closed_forms(name):
  s = diffusion.make_schedule(name, 50)
  betas = np.asarray(s.betas, np.float64)
  alphas_cumprod = np.cumprod(1.0 - betas)
  prev = np.append(1.0, alphas_cumprod[:-1])
  assert s.num_timesteps == 50
  for field in s:
    assert field.shape == (50,) and field.dtype == np.float32
  np.testing.assert_allclose(s.alphas, 1.0 - betas, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(s.alphas_cumprod, alphas_cumprod, rtol=1e-4, atol=1e-8)
  np.testing.assert_allclose(s.alphas_cumprod_prev, prev, rtol=1e-4, atol=1e-8)
  np.testing.assert_allclose(s.sqrt_alphas_cumprod ** 2, alphas_cumprod, rtol=1e-4, atol=1e-10)
  np.testing.assert_allclose(s.sqrt_one_minus_alphas_cumprod ** 2, 1 - alphas_cumprod, rtol=1e-4, atol=1e-10)
  np.testing.assert_allclose(s.posterior_variance, betas * (1 - prev) / (1 - alphas_cumprod),
                             rtol=1e-4, atol=1e-10)
  assert s.posterior_variance[0] == 0.0
  np.testing.assert_allclose(s.posterior_log_variance_clipped[0], np.log(s.posterior_variance[1]), rtol=1e-4)
  assert np.all(np.isfinite(s.posterior_log_variance_clipped))


def test_linear_and_quad_betas():
  np.testing.assert_allclose(diffusion.make_schedule('linear', 1000).betas,
                             np.linspace(1e-4, 0.02, 1000), rtol=1e-6)
  quad = diffusion.make_schedule('quad', 100, beta_start=1e-3, beta_end=0.01).betas
  np.testing.assert_allclose(quad, np.linspace(math.sqrt(1e-3), 0.1, 100) ** 2, rtol=1e-6)
  assert quad[0] == pytest.approx(1e-3) and quad[-1] == pytest.approx(0.01)


def test_cosine_alphas_cumprod_follows_squared_cosine():
  steps = 1000
  s = diffusion.make_schedule('cosine', steps)
  f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
  expected = np.array([f((i + 1) / steps) / f(0) for i in range(steps)])
  # Only the last beta is clipped at 0.999 for T=1000; compare away from it.
  np.testing.assert_allclose(s.alphas_cumprod[:-1], expected[:-1], rtol=1e-4, atol=1e-7)
  assert float(np.max(s.betas)) <= 0.999 + 1e-6


def test_bad_input():
  with pytest.raises(ValueError, match='linear'):
    diffusion.make_schedule('sigmoid', 10)
  with pytest.raises(ValueError, match='positive'):
    diffusion.make_schedule('linear', 0)
  with pytest.raises(ValueError, match='inside'):
    diffusion.make_schedule('linear', 10, beta_start=0.0)


@pytest.mark.parametrize('ours,theirs', [('linear', 'linear'), ('quad', 'scaled_linear'),
                                          ('cosine', 'squaredcos_cap_v2')])
@pytest.mark.parametrize('steps', [1000, 2000])
def test_matches_diffusers_ddpm_scheduler(ours, theirs, steps):
  diffusers = pytest.importorskip('diffusers')
  ref = diffusers.DDPMScheduler(num_train_timesteps=steps, beta_schedule=theirs)
  s = diffusion.make_schedule(ours, steps)
  np.testing.assert_allclose(s.betas, ref.betas.numpy(), rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose(s.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=1e-4, atol=1e-7)

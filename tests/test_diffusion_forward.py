"""q_sample and the Gaussian posterior against exact algebra in float64 numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdm_jax import diffusion


@pytest.fixture(scope='module')
def schedule():
  return diffusion.make_schedule('linear', 100)


def test_q_sample_moments(schedule):
  key0, key1 = jax.random.split(jax.random.PRNGKey(0))
  x0 = jnp.full((4, 2, 2, 1), 0.7)
  t = jnp.array([0, 10, 50, 99], jnp.int32)
  # Many noise draws per example: the sample mean/std must match sqrt(a_bar) x0 and sqrt(1 - a_bar).
  noise = jax.random.normal(key0, (20000, 4, 2, 2, 1))
  x_t = jax.vmap(lambda n: diffusion.q_sample(schedule, x0, t, n))(noise)
  ab = np.asarray(schedule.alphas_cumprod, np.float64)[np.asarray(t)]
  np.testing.assert_allclose(np.mean(x_t, axis=(0, 2, 3, 4)), np.sqrt(ab) * 0.7, atol=0.02)
  np.testing.assert_allclose(np.std(x_t, axis=(0, 2, 3, 4)), np.sqrt(1 - ab), rtol=0.02, atol=1e-3)
  del key1


def test_posterior_matches_bayes_rule(schedule):
  rng = np.random.default_rng(0)
  x0 = rng.normal(size=(3, 2, 2, 1)).astype(np.float32)
  x_t = rng.normal(size=(3, 2, 2, 1)).astype(np.float32)
  t = np.array([1, 40, 99], np.int32)
  mean, var, log_var = diffusion.posterior_mean_variance(schedule, x0, x_t, t)
  betas = np.linspace(1e-4, 0.02, 100)
  ab = np.cumprod(1 - betas)
  for i, step in enumerate(t):
    # Prior x_{t-1} ~ N(sqrt(ab_prev) x0, 1 - ab_prev); likelihood x_t ~ N(sqrt(1-beta) x_{t-1}, beta).
    prior_mean, prior_var = np.sqrt(ab[step - 1]) * x0[i], 1 - ab[step - 1]
    a, lik_var = np.sqrt(1 - betas[step]), betas[step]
    post_var = 1.0 / (1.0 / prior_var + a * a / lik_var)
    post_mean = post_var * (prior_mean / prior_var + a * x_t[i] / lik_var)
    np.testing.assert_allclose(mean[i], post_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(var[i].ravel(), post_var, rtol=1e-4)
    np.testing.assert_allclose(log_var[i].ravel(), np.log(post_var), rtol=1e-4)


def test_eps_x0_round_trip(schedule):
  rng = np.random.default_rng(1)
  x0 = rng.normal(size=(5, 3, 3, 2)).astype(np.float32)
  noise = rng.normal(size=x0.shape).astype(np.float32)
  t = np.array([0, 5, 30, 70, 99], np.int32)
  x_t = diffusion.q_sample(schedule, x0, t, noise)
  np.testing.assert_allclose(diffusion.predict_x0_from_eps(schedule, x_t, t, noise), x0, atol=2e-4)
  np.testing.assert_allclose(diffusion.predict_eps_from_x0(schedule, x_t, t, x0), noise, atol=2e-3)


def test_jit_and_bad_input(schedule):
  x = jnp.zeros((2, 4, 4, 1))
  out = jax.jit(diffusion.q_sample)(schedule, x, jnp.array([1, 2]), x)
  assert out.shape == x.shape
  with pytest.raises(ValueError, match='shape'):
    diffusion.q_sample(schedule, x, jnp.array([1, 2, 3]), x)
  with pytest.raises(ValueError, match='int'):
    diffusion.q_sample(schedule, x, jnp.array([1.0, 2.0]), x)
  with pytest.raises(ValueError, match='noise'):
    diffusion.q_sample(schedule, x, jnp.array([1, 2]), jnp.zeros((2, 4, 4, 3)))

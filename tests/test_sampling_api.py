"""The public sampling call: jit with traced params, timesteps, NFE counts, guidance and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdm_jax import diffusion
from pdm_jax import sampling


@pytest.fixture(scope='module')
def schedule():
  return diffusion.make_schedule('linear', 100)


def toy_net(params, x, t):
  """Stands in for a network: depends on traced params, x and t."""
  return jnp.tanh(params['w'] * x + params['b'] * t[:, None, None, None].astype(x.dtype) / 100.0)


@pytest.mark.parametrize('method', sampling.METHODS)
def test_jit_with_traced_params(schedule, method):
  params = {'w': jnp.asarray(0.5), 'b': jnp.asarray(0.1)}
  run = jax.jit(lambda params, rng: sampling.sample(lambda x, t: toy_net(params, x, t), schedule, (3, 4, 4, 2), rng,
                                                    method=method, num_steps=10, return_nfe=True))
  x0, nfe = run(params, jax.random.PRNGKey(0))
  assert x0.shape == (3, 4, 4, 2) and x0.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(x0))) and float(jnp.max(jnp.abs(x0))) <= 1.0
  expected = {'ddpm': 10, 'ddim': 10, 's-pndm': 11, 'f-pndm': 19, 'fon': 40}
  if method in expected:
    assert int(nfe) == expected[method]
  else:
    assert int(nfe) > 6


@pytest.mark.parametrize('method', ['ddpm', 'ddim', 'f-pndm'])
def test_nfe_matches_actual_calls(schedule, method):
  calls = []
  def eps_fn(x, t):
    jax.debug.callback(lambda: calls.append(1))
    return 0.1 * x
  _, nfe = sampling.sample(eps_fn, schedule, (2, 2, 2, 1), jax.random.PRNGKey(0), method, 7, return_nfe=True)
  jax.effects_barrier()
  assert len(calls) == int(nfe)


def test_eps_fn_sees_int32_timesteps_in_order(schedule):
  seen = []
  def eps_fn(x, t):
    assert t.dtype == jnp.int32 and t.shape == (x.shape[0],)
    jax.debug.callback(lambda t: seen.append(int(t[0])), t)
    return jnp.zeros_like(x)
  sampling.sample(eps_fn, schedule, (2, 1, 1, 1), jax.random.PRNGKey(0), 'ddim', 4, timestep_spacing='trailing')
  jax.effects_barrier()
  assert seen == [99, 74, 49, 24]


@pytest.mark.parametrize('spacing', sampling.TIMESTEP_SPACINGS)
@pytest.mark.parametrize('num_steps', [1, 3, 7, 10, 50, 999, 1000])
def test_timesteps_match_diffusers(spacing, num_steps):
  diffusers = pytest.importorskip('diffusers')
  ref = diffusers.DDPMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
  ref.set_timesteps(num_steps)
  np.testing.assert_array_equal(sampling.make_timesteps(1000, num_steps, spacing), ref.timesteps.numpy())


def test_classifier_free_guidance():
  cond = lambda x, t: x + 1.0
  uncond = lambda x, t: 2.0 * x
  x, t = jnp.ones((2, 1, 1, 1)), jnp.zeros((2,), jnp.int32)
  np.testing.assert_allclose(sampling.classifier_free_guidance(cond, uncond, 3.0)(x, t), 2.0 + 3.0 * 0.0)
  np.testing.assert_allclose(sampling.classifier_free_guidance(cond, uncond, 1.0)(3 * x, t), 4.0)
  np.testing.assert_allclose(sampling.classifier_free_guidance(cond, uncond, 0.0)(3 * x, t), 6.0)
  with pytest.raises(ValueError, match='callables'):
    sampling.classifier_free_guidance(cond, None, 1.0)


def test_continuous_schedule_round_trips(schedule):
  t = jnp.arange(-1, 100)
  np.testing.assert_allclose(sampling.alphas_cumprod_at(schedule, t.astype(jnp.float32)),
                             sampling.alphas_cumprod_at(schedule, t), rtol=2e-6)
  t_float = jnp.linspace(-1.0, 99.0, 57)
  np.testing.assert_allclose(sampling.timestep_at_sigma(schedule, sampling.sigma_at(schedule, t_float)), t_float,
                             atol=2e-3)


def test_bad_input(schedule):
  eps_fn = lambda x, t: jnp.zeros_like(x)
  rng = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match='ddpm'):
    sampling.sample(eps_fn, schedule, (1, 2, 2, 1), rng, method='euler')
  with pytest.raises(ValueError, match=r'\[1, 100\]'):
    sampling.sample(eps_fn, schedule, (1, 2, 2, 1), rng, 'ddim', num_steps=101)
  with pytest.raises(ValueError, match=r'\[1, 100\]'):
    sampling.sample(eps_fn, schedule, (1, 2, 2, 1), rng, 'ddim', num_steps=0)
  with pytest.raises(ValueError, match='leading'):
    sampling.sample(eps_fn, schedule, (1, 2, 2, 1), rng, 'ddim', 10, timestep_spacing='karras')
  with pytest.raises(ValueError, match='beta_tilde'):
    sampling.sample(eps_fn, schedule, (1, 2, 2, 1), rng, 'ddpm', 10, variance='learned')
  with pytest.raises(ValueError, match='eta'):
    sampling.sample(eps_fn, schedule, (1, 2, 2, 1), rng, 'ddim', 10, eta=-1.0)
  with pytest.raises(ValueError, match='shape'):
    sampling.sample(eps_fn, schedule, (1, 0, 2), rng)
  with pytest.raises(ValueError, match='Schedule'):
    sampling.sample(eps_fn, {'betas': 1}, (1, 2, 2, 1), rng)
  with pytest.raises(ValueError, match='rng'):
    sampling.sample_from_noise(eps_fn, schedule, jnp.zeros((1, 2, 2, 1)), None, 'ddpm', 10)
  with pytest.raises(ValueError, match='eps_fn returned shape'):
    sampling.sample(lambda x, t: jnp.zeros(x.shape[:-1] + (2,)), schedule, (1, 2, 2, 1), rng, 'ddim', 10)
  with pytest.raises(ValueError, match='positive'):
    sampling.sample(eps_fn, schedule, (1, 2, 2, 1), rng, 'pf', ode_rtol=0.0)


def test_check_options_names_the_config_field_when_given_a_prefix(schedule):
  with pytest.raises(ValueError, match=r"^Unknown sampling method 'euler'"):  # the Python API: argument names
    sampling.check_options(schedule, 'euler')
  with pytest.raises(ValueError, match=r"^Unknown sampling method sample\.method='euler'"):
    sampling.check_options(schedule, 'euler', prefix='sample.')
  with pytest.raises(ValueError, match=r'^sample\.num_steps must be an int in \[1, 100\]'):
    sampling.check_options(schedule, 'ddim', 101, prefix='sample.')


@pytest.mark.parametrize('method', ['fon', 'pf'])
def test_continuous_solvers_pass_float_timesteps_in_range(schedule, method):
  seen = []
  def eps_fn(x, t):
    assert t.dtype == jnp.float32
    jax.debug.callback(lambda t: seen.append(float(t[0])), t)
    return 0.1 * x
  sampling.sample(eps_fn, schedule, (2, 1, 1, 1), jax.random.PRNGKey(0), method, 5)
  jax.effects_barrier()
  assert min(seen) == -1.0 and max(seen) <= 99.0
  assert any(t != round(t) for t in seen)

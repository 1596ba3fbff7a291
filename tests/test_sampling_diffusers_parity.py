"""Parity with diffusers' schedulers on the same inputs, noise and noise predictor.

Where the definitions coincide:
- DDPMScheduler.step (fixed_small = our beta_tilde, fixed_large = our beta, clip_sample = clip_denoised),
  strided or not, for `leading` spacing (diffusers adds noise when t > 0, we when t_prev >= 0: the same there).
- DDIMScheduler.step with eta and variance_noise, set_alpha_to_one=True (its default).
- PNDMScheduler with skip_prk_steps=False is F-PNDM: three pseudo-RK4 steps, midpoint t - (T//n)//2 (= ours
  (t + t_next)//2 on the leading grid), then AB4 on eps; compared over a whole run with set_alpha_to_one=True
  (its default False ends at alpha_bar_0 instead of 1).
- PNDMScheduler with skip_prk_steps=True is neither S- nor F-PNDM: it starts with the pseudo improved-Euler
  step and then raises the multistep order (AB2, AB3, AB4). Its first two steps are S-PNDM's, so runs of
  two steps coincide and are compared; longer runs differ by design.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from pdm_jax import diffusion
from pdm_jax import sampling

diffusers = pytest.importorskip('diffusers')
torch = pytest.importorskip('torch')

T = 1000
SHAPE = (2, 3, 4, 4)  # Layout is irrelevant: every step is elementwise.


def torch_eps(x, t):
  return torch.tanh(1.3 * x) * (0.5 + float(t) / 2000.0)


def jax_eps(x, t):
  return jnp.tanh(1.3 * x) * (0.5 + t[:, None, None, None].astype(jnp.float32) / 2000.0)


def inputs(seed):
  gen = torch.Generator().manual_seed(seed)
  # Large values so that the x0 clip is active on some entries.
  return tuple(2.0 * torch.randn(SHAPE, generator=gen) for _ in range(3))


@pytest.mark.parametrize('variance,variance_type', [('beta_tilde', 'fixed_small'), ('beta', 'fixed_large')])
@pytest.mark.parametrize('num_steps', [1000, 50, 7])
@pytest.mark.parametrize('clip', [True, False])
def test_ddpm_step(variance, variance_type, num_steps, clip):
  ref = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule='linear', variance_type=variance_type,
                                clip_sample=clip)
  ref.set_timesteps(num_steps)
  schedule = diffusion.make_schedule('linear', T)
  timesteps = ref.timesteps.numpy()
  prev = np.append(timesteps[1:], -1)
  for i in [0, 1, len(timesteps) // 2, len(timesteps) - 1]:
    x, eps, _ = inputs(i)
    seed = 100 + i
    expected = ref.step(eps, int(timesteps[i]), x, generator=torch.Generator().manual_seed(seed)).prev_sample
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))
    ours = sampling.ddpm_step(schedule, jnp.asarray(x.numpy()), jnp.asarray(eps.numpy()), int(timesteps[i]),
                              int(prev[i]), jnp.asarray(noise.numpy()), variance, clip)
    np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize('eta', [0.0, 0.5, 1.0])
@pytest.mark.parametrize('clip', [True, False])
def test_ddim_step(eta, clip):
  ref = diffusers.DDIMScheduler(num_train_timesteps=T, beta_schedule='scaled_linear', clip_sample=clip,
                                beta_start=1e-4, beta_end=0.02)
  ref.set_timesteps(20)
  schedule = diffusion.make_schedule('quad', T)
  timesteps = ref.timesteps.numpy()
  prev = np.append(timesteps[1:], -1)
  for i in [0, 7, 19]:
    x, eps, noise = inputs(i)
    expected = ref.step(eps, int(timesteps[i]), x, eta=eta, variance_noise=noise).prev_sample
    ours = sampling.ddim_step(schedule, jnp.asarray(x.numpy()), jnp.asarray(eps.numpy()), int(timesteps[i]),
                              int(prev[i]), jnp.asarray(noise.numpy()), eta, clip)
    np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-5, atol=2e-5)


def run_diffusers(scheduler, x):
  for t in scheduler.timesteps:
    x = scheduler.step(torch_eps(x, t), t, x).prev_sample
  return x


@pytest.mark.parametrize('spacing', ['leading', 'trailing'])
def test_ddim_full_run(spacing):
  ref = diffusers.DDIMScheduler(num_train_timesteps=T, beta_schedule='squaredcos_cap_v2', clip_sample=False,
                                timestep_spacing=spacing)
  ref.set_timesteps(25)
  x, _, _ = inputs(0)
  expected = run_diffusers(ref, x)
  ours = sampling.sample_from_noise(jax_eps, diffusion.make_schedule('cosine', T), jnp.asarray(x.numpy()), None,
                                    'ddim', 25, timestep_spacing=spacing, clip_denoised=False)
  np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('num_steps', [10, 25, 50])
def test_f_pndm_matches_pndm_scheduler_with_prk(num_steps):
  ref = diffusers.PNDMScheduler(num_train_timesteps=T, beta_schedule='linear', skip_prk_steps=False,
                                set_alpha_to_one=True)
  ref.set_timesteps(num_steps)
  x, _, _ = inputs(1)
  x = 0.5 * x
  expected = run_diffusers(ref, x)
  ours, nfe = sampling.sample_from_noise(jax_eps, diffusion.make_schedule('linear', T), jnp.asarray(x.numpy()),
                                         None, 'f-pndm', num_steps, clip_denoised=False, return_nfe=True)
  assert int(nfe) == len(ref.timesteps)
  np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-4, atol=1e-4)


def test_s_pndm_matches_plms_for_two_steps():
  ref = diffusers.PNDMScheduler(num_train_timesteps=T, beta_schedule='linear', skip_prk_steps=True,
                                set_alpha_to_one=True)
  ref.set_timesteps(2)
  x, _, _ = inputs(2)
  expected = run_diffusers(ref, x)
  ours, nfe = sampling.sample_from_noise(jax_eps, diffusion.make_schedule('linear', T), jnp.asarray(x.numpy()),
                                         None, 's-pndm', 2, clip_denoised=False, return_nfe=True)
  assert int(nfe) == len(ref.timesteps) == 3
  np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-4, atol=1e-4)

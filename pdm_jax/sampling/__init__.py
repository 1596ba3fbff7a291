"""Samplers over any noise predictor eps_fn(x_t, t): DDPM, DDIM, S-/F-PNDM, FON and the probability-flow ODE."""

from pdm_jax.diffusion.continuous_time import alphas_cumprod_at
from pdm_jax.diffusion.continuous_time import sigma_at
from pdm_jax.diffusion.continuous_time import timestep_at_sigma
from pdm_jax.sampling.ddim import ddim_step
from pdm_jax.sampling.ddim import transfer
from pdm_jax.sampling.ddpm import ddpm_step
from pdm_jax.sampling.ddpm import VARIANCES
from pdm_jax.sampling.noise_predictor import classifier_free_guidance
from pdm_jax.sampling.sampler import check_options
from pdm_jax.sampling.sampler import METHODS
from pdm_jax.sampling.sampler import sample
from pdm_jax.sampling.sampler import sample_from_noise
from pdm_jax.sampling.timesteps import make_timesteps
from pdm_jax.sampling.timesteps import TIMESTEP_SPACINGS

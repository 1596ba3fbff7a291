"""Discrete diffusion: schedules, the forward process, prediction types and loss weights."""

from pdm_jax.diffusion.continuous_time import alphas_cumprod_at
from pdm_jax.diffusion.continuous_time import alphas_cumprod_like
from pdm_jax.diffusion.continuous_time import sigma_at
from pdm_jax.diffusion.continuous_time import timestep_at_sigma
from pdm_jax.diffusion.forward import extract
from pdm_jax.diffusion.forward import posterior_mean_variance
from pdm_jax.diffusion.forward import predict_eps_from_x0
from pdm_jax.diffusion.forward import predict_x0_from_eps
from pdm_jax.diffusion.forward import q_sample
from pdm_jax.diffusion.forward import x0_from_eps
from pdm_jax.diffusion.prediction import loss
from pdm_jax.diffusion.prediction import loss_weights
from pdm_jax.diffusion.prediction import PREDICTION_TYPES
from pdm_jax.diffusion.prediction import snr
from pdm_jax.diffusion.prediction import to_epsilon
from pdm_jax.diffusion.prediction import to_x0
from pdm_jax.diffusion.prediction import training_target
from pdm_jax.diffusion.prediction import WEIGHTINGS
from pdm_jax.diffusion.schedules import betas_to_schedule
from pdm_jax.diffusion.schedules import make_schedule
from pdm_jax.diffusion.schedules import Schedule
from pdm_jax.diffusion.schedules import SCHEDULE_NAMES

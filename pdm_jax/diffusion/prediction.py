"""Network parameterisations (epsilon, sample, v), their training targets, SNR loss weights and the diffusion loss."""

import jax.numpy as jnp

from pdm_jax.diffusion.continuous_time import alphas_cumprod_at
from pdm_jax.diffusion.forward import _check_batch
from pdm_jax.diffusion.forward import x0_from_eps
from pdm_jax.diffusion.schedules import Schedule

PREDICTION_TYPES = ('epsilon', 'sample', 'v')
WEIGHTINGS = ('uniform', 'min_snr')


def _check_type(prediction_type: str) -> None:
  if prediction_type not in PREDICTION_TYPES:
    raise ValueError(f'Unknown prediction_type {prediction_type!r}; use one of {PREDICTION_TYPES}.')


def _coefficients(schedule: Schedule, t: jnp.ndarray, ndim: int):
  # Float t (continuous solvers) is interpolated; integer t reads the table.
  alpha_bar = alphas_cumprod_at(schedule, t).reshape((-1,) + (1,) * (ndim - 1))
  return jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar)


def training_target(schedule: Schedule, x0: jnp.ndarray, noise: jnp.ndarray, t: jnp.ndarray,
                    prediction_type: str) -> jnp.ndarray:
  """What the network regresses: noise, x0, or v = sqrt(a_bar) noise - sqrt(1 - a_bar) x0; (N, H, W, C)."""
  _check_type(prediction_type)
  _check_batch(x0, t)
  if prediction_type == 'epsilon':
    return noise
  if prediction_type == 'sample':
    return x0
  sqrt_ab, sqrt_one_minus_ab = _coefficients(schedule, t, x0.ndim)
  return sqrt_ab * noise - sqrt_one_minus_ab * x0


def _x0_and_epsilon(schedule: Schedule, model_output: jnp.ndarray, x_t: jnp.ndarray, t: jnp.ndarray,
                    prediction_type: str) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(x0, noise) predictions that a network output of `prediction_type` stands for; shapes (N, H, W, C).

  Under jit the one a caller drops is never computed.
  """
  _check_type(prediction_type)
  _check_batch(x_t, t)
  sqrt_ab, sqrt_one_minus_ab = _coefficients(schedule, t, x_t.ndim)
  if prediction_type == 'epsilon':
    return x0_from_eps(x_t, model_output, sqrt_ab**2), model_output
  if prediction_type == 'sample':
    # At t = -1 (alpha_bar = 1, reached by ODE solvers) eps is 0/0; its limit -sigma * score is 0.
    noisy = sqrt_one_minus_ab > 0
    eps = jnp.where(noisy, (x_t - sqrt_ab * model_output) / jnp.where(noisy, sqrt_one_minus_ab, 1.0), 0.0)
    return model_output, eps
  # From x_t = sqrt_ab x0 + s eps and v = sqrt_ab eps - s x0 with sqrt_ab^2 + s^2 = 1.
  return sqrt_ab * x_t - sqrt_one_minus_ab * model_output, sqrt_one_minus_ab * x_t + sqrt_ab * model_output


def to_epsilon(schedule: Schedule, model_output: jnp.ndarray, x_t: jnp.ndarray, t: jnp.ndarray,
               prediction_type: str) -> jnp.ndarray:
  """Converts a network output of `prediction_type` to the noise prediction; shapes (N, H, W, C)."""
  if prediction_type == 'epsilon':
    _check_batch(x_t, t)
    return model_output
  return _x0_and_epsilon(schedule, model_output, x_t, t, prediction_type)[1]


def to_x0(schedule: Schedule, model_output: jnp.ndarray, x_t: jnp.ndarray, t: jnp.ndarray,
          prediction_type: str) -> jnp.ndarray:
  """Converts a network output of `prediction_type` to the x0 prediction; shapes (N, H, W, C)."""
  return _x0_and_epsilon(schedule, model_output, x_t, t, prediction_type)[0]


def snr(schedule: Schedule, t: jnp.ndarray) -> jnp.ndarray:
  """Signal-to-noise ratio a_bar_t / (1 - a_bar_t) at timesteps t (N,) -> (N,) (float t interpolated)."""
  if jnp.ndim(t) != 1:
    raise ValueError(f't must have shape (N,), got {jnp.shape(t)}.')
  alphas_cumprod = alphas_cumprod_at(schedule, t)
  return alphas_cumprod / (1.0 - alphas_cumprod)


def loss_weights(schedule: Schedule, t: jnp.ndarray, weighting: str, prediction_type: str,
                 snr_gamma: float = 5.0) -> jnp.ndarray:
  """Per-example loss weights (N,): `uniform` ones, or `min_snr` (Hang et al. 2023) for the prediction type."""
  _check_type(prediction_type)
  if weighting not in WEIGHTINGS:
    raise ValueError(f'Unknown weighting {weighting!r}; use one of {WEIGHTINGS}.')
  if weighting == 'uniform':
    return jnp.ones(jnp.shape(t), jnp.float32)
  if snr_gamma <= 0:
    raise ValueError(f'snr_gamma must be positive, got {snr_gamma}.')
  ratio = snr(schedule, t)
  clipped = jnp.minimum(ratio, snr_gamma)
  # Min-SNR weights the x0-space error by min(snr, gamma); each parameterisation rescales
  # its own loss to that: eps-MSE = snr * x0-MSE, v-MSE = (snr + 1) * x0-MSE.
  if prediction_type == 'epsilon':
    return clipped / ratio
  if prediction_type == 'sample':
    return clipped
  return clipped / (ratio + 1.0)


def loss(schedule: Schedule, model_output: jnp.ndarray, x0: jnp.ndarray, noise: jnp.ndarray, t: jnp.ndarray, *,
         prediction_type: str, weighting: str = 'uniform', snr_gamma: float = 5.0) -> jnp.ndarray:
  """The diffusion loss of every model kind: the weighted mean over images of each image's mean squared error
  between the network output and the target of `prediction_type`. (N, H, W, C) arrays, t (N,) -> scalar."""
  target = training_target(schedule, x0, noise, t, prediction_type)
  weights = loss_weights(schedule, t, weighting, prediction_type, snr_gamma)
  per_image = jnp.mean((model_output - target)**2, axis=tuple(range(1, model_output.ndim)))
  return jnp.mean(weights * per_image)

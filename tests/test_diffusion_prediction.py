"""Prediction types round-trip, and SNR / Min-SNR weights match their definitions."""

import numpy as np
import pytest

from pdm_jax import diffusion


@pytest.fixture(scope='module')
def setup():
  schedule = diffusion.make_schedule('cosine', 200)
  rng = np.random.default_rng(0)
  x0 = rng.uniform(-1, 1, size=(4, 3, 3, 2)).astype(np.float32)
  noise = rng.normal(size=x0.shape).astype(np.float32)
  t = np.array([0, 20, 120, 180], np.int32)
  return schedule, x0, noise, t, diffusion.q_sample(schedule, x0, t, noise)


@pytest.mark.parametrize('prediction_type', diffusion.PREDICTION_TYPES)
def test_perfect_prediction_round_trips(setup, prediction_type):
  schedule, x0, noise, t, x_t = setup
  target = diffusion.training_target(schedule, x0, noise, t, prediction_type)
  eps = diffusion.to_epsilon(schedule, target, x_t, t, prediction_type)
  x0_hat = diffusion.to_x0(schedule, target, x_t, t, prediction_type)
  # 'sample' -> eps divides by sqrt(1 - a_bar) ~ 0.01 at t=0; tolerance reflects that float32 amplification.
  np.testing.assert_allclose(eps, noise, atol=5e-3 if prediction_type == 'sample' else 1e-4)
  np.testing.assert_allclose(x0_hat, x0, atol=1e-4)


def test_v_target_closed_form(setup):
  schedule, x0, noise, t, _ = setup
  ab = np.asarray(schedule.alphas_cumprod, np.float64)[t][:, None, None, None]
  v = diffusion.training_target(schedule, x0, noise, t, 'v')
  np.testing.assert_allclose(v, np.sqrt(ab) * noise - np.sqrt(1 - ab) * x0, atol=1e-5)


@pytest.mark.parametrize('prediction_type', diffusion.PREDICTION_TYPES)
def test_loss_weights(setup, prediction_type):
  schedule, _, _, t, _ = setup
  ab = np.asarray(schedule.alphas_cumprod, np.float64)[t]
  ratio = ab / (1 - ab)
  np.testing.assert_allclose(diffusion.snr(schedule, t), ratio, rtol=1e-4)
  np.testing.assert_array_equal(diffusion.loss_weights(schedule, t, 'uniform', prediction_type), 1.0)
  clipped = np.minimum(ratio, 5.0)
  expected = {'epsilon': clipped / ratio, 'sample': clipped, 'v': clipped / (ratio + 1)}[prediction_type]
  got = diffusion.loss_weights(schedule, t, 'min_snr', prediction_type, snr_gamma=5.0)
  assert got.shape == (4,)
  np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_bad_input(setup):
  schedule, x0, noise, t, x_t = setup
  with pytest.raises(ValueError, match='epsilon'):
    diffusion.training_target(schedule, x0, noise, t, 'score')
  with pytest.raises(ValueError, match='min_snr'):
    diffusion.loss_weights(schedule, t, 'p2', 'epsilon')
  with pytest.raises(ValueError, match='positive'):
    diffusion.loss_weights(schedule, t, 'min_snr', 'epsilon', snr_gamma=0.0)


def test_float_timesteps_interpolate_and_data_end_is_finite(setup):
  schedule, x0, noise, _, _ = setup
  t_int = np.array([0, 20, 120, 180], np.int32)
  x_t = diffusion.q_sample(schedule, x0, t_int, noise)
  for prediction_type in diffusion.PREDICTION_TYPES:
    target = diffusion.training_target(schedule, x0, noise, t_int, prediction_type)
    from_int = diffusion.to_epsilon(schedule, target, x_t, t_int, prediction_type)
    from_float = diffusion.to_epsilon(schedule, target, x_t, t_int.astype(np.float32), prediction_type)
    np.testing.assert_allclose(from_float, from_int, rtol=1e-3, atol=1e-3)
  # Continuous solvers evaluate at t = -1 (alpha_bar = 1): x-prediction must not give 0/0 there.
  eps = diffusion.to_epsilon(schedule, x0, x0, np.full((4,), -1.0, np.float32), 'sample')
  np.testing.assert_array_equal(eps, 0.0)
  between = float(diffusion.snr(schedule, np.array([10.5], np.float32))[0])
  low, high = np.asarray(diffusion.snr(schedule, np.array([11, 10])))
  assert low < between < high

"""PDM's balanced (Sinkhorn) prototype assignment, its feature queue, and the dataset-wide prototype health."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits_pdm
from pdm_jax import preflight
from pdm_jax.inference import prototype_health
from pdm_jax.models import factory
from pdm_jax.models import prototypes
from pdm_jax.training import checkpoints
from pdm_jax.training import state as state_lib


def test_sinkhorn_one_iteration_by_hand():
  # exp(scores) = [[4, 1], [1, 1]]. Columns to 1/K each: [[0.4, 0.25], [0.1, 0.25]]; rows to 1 (after scaling by N):
  # [[0.4/0.65, 0.25/0.65], [0.1/0.35, 0.25/0.35]].
  scores = jnp.log(jnp.array([[4.0, 1.0], [1.0, 1.0]]))
  codes = prototypes.sinkhorn(scores, epsilon=1.0, num_iters=1)
  np.testing.assert_allclose(codes, [[8 / 13, 5 / 13], [2 / 7, 5 / 7]], rtol=1e-6)


def _swav_sinkhorn(scores: np.ndarray, epsilon: float, num_iters: int) -> np.ndarray:
  """The published algorithm (SwAV, Caron et al. 2020, Algorithm 1's sinkhorn) in float64, for comparison."""
  q = np.exp(scores / epsilon).T  # (K, N)
  q /= q.sum()
  k, n = q.shape
  for _ in range(num_iters):
    q /= q.sum(axis=1, keepdims=True)
    q /= k
    q /= q.sum(axis=0, keepdims=True)
    q /= n
  return (q * n).T


def test_sinkhorn_matches_the_published_algorithm():
  scores = np.random.default_rng(0).normal(size=(12, 5)) * 0.2
  for num_iters in (1, 3):
    codes = prototypes.sinkhorn(jnp.asarray(scores, jnp.float32), epsilon=0.05, num_iters=num_iters)
    np.testing.assert_allclose(codes, _swav_sinkhorn(scores, 0.05, num_iters), rtol=1e-4, atol=1e-6)


def test_sinkhorn_balances_what_argmin_collapses():
  # Every row is nearest to prototype 0: argmin gives it all six; the balanced assignment gives each of the three
  # prototypes two rows, and stays finite at a tiny epsilon (log space).
  distances = np.array([[1.0, 2.0, 3.0], [1.0, 2.5, 2.0], [1.0, 1.1, 3.0],
                        [1.0, 3.0, 1.2], [1.0, 1.3, 2.0], [1.0, 2.0, 1.1]])
  assert (distances.argmin(axis=1) == 0).all()
  codes = np.asarray(prototypes.sinkhorn(-jnp.asarray(distances), epsilon=0.01, num_iters=50))
  assert np.isfinite(codes).all()
  np.testing.assert_allclose(codes.sum(axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(codes.sum(axis=0), 2.0, rtol=0.05)  # columns converge more slowly than rows
  assert sorted(np.bincount(codes.argmax(axis=1), minlength=3)) == [2, 2, 2]


def test_sinkhorn_ignores_invalid_rows():
  scores = jnp.asarray(np.random.default_rng(1).normal(size=(6, 3)), jnp.float32)
  valid = jnp.array([True, True, False, True, False, True])
  codes = prototypes.sinkhorn(scores, epsilon=0.5, num_iters=3, valid=valid)
  np.testing.assert_array_equal(codes[~valid], 0.0)
  np.testing.assert_allclose(codes[valid], prototypes.sinkhorn(scores[valid], epsilon=0.5, num_iters=3), rtol=1e-5)


def test_cross_entropy_against_soft_targets_by_hand():
  features = jnp.array([[0.0, 0.0]])
  bank = jnp.array([[1.0, 0.0], [0.0, 2.0]])  # distances 1 and 2
  targets = jnp.array([[0.25, 0.75]])
  losses = prototypes.prototype_losses(features, bank, jnp.array([1]), tau=1.0, alpha=0.0, beta=0.0, targets=targets)
  log_p = np.log(np.exp([-1.0, -2.0]) / np.exp([-1.0, -2.0]).sum())
  np.testing.assert_allclose(losses['contrastive_loss'], -(0.25 * log_p[0] + 0.75 * log_p[1]), rtol=1e-6)
  # Alignment pulls the feature to the selected prototype (1): mean((0 - [0, 2])^2) = 2.
  np.testing.assert_allclose(losses['align_loss'], 2.0, rtol=1e-6)
  hard = prototypes.prototype_losses(features, bank, jnp.array([1]), tau=1.0, alpha=0.0, beta=0.0)
  np.testing.assert_allclose(hard['contrastive_loss'], -log_p[1], rtol=1e-6)


def _digits_model(**model_fields):
  config = digits_pdm.get_config()
  config.model.update(block_out_channels=(8, 8, 8), norm_num_groups=4, prototype_dim=16, num_prototypes=4,
                      **model_fields)
  model = factory.build_model(config.model, image_size=8, num_channels=1, num_classes=None)
  return config, model, state_lib.init_variables(model, jax.random.PRNGKey(0), (8, 8, 1))


def _train_apply(model, variables, images):
  (_, aux), mutated = model.apply(variables, images, jnp.zeros((len(images),), jnp.int32), clean_images=images,
                                  train=True, rngs={'dropout': jax.random.PRNGKey(1)}, mutable=['batch_stats'])
  return aux, {**variables, 'batch_stats': mutated['batch_stats']}


def _train_features(model, variables, images):
  return model.apply(variables, images, method=lambda m, x: m.memory.encode(x, train=True), mutable=['batch_stats'])[0]


def test_pdm_conditions_on_the_balanced_choice():
  _, model, variables = _digits_model(prototype_assignment='sinkhorn', sinkhorn_epsilon=0.05)
  images = jax.random.uniform(jax.random.PRNGKey(2), (8, 8, 8, 1), minval=-1, maxval=1)
  aux, _ = _train_apply(model, variables, images)
  features = _train_features(model, variables, images)
  bank = variables['params']['memory']['prototypes']
  codes = prototypes.sinkhorn(-prototypes.euclidean_distances(features, bank), epsilon=0.05, num_iters=3)
  np.testing.assert_array_equal(aux['selected_prototype'], np.argmax(codes, axis=-1))
  log_p = jax.nn.log_softmax(-prototypes.euclidean_distances(features, bank), axis=-1)
  np.testing.assert_allclose(aux['contrastive_loss'], -jnp.mean(jnp.sum(codes * log_p, axis=-1)), rtol=1e-5)
  # The reference's assignment is the nearest prototype.
  _, argmin_model, _ = _digits_model(prototype_assignment='argmin')
  argmin_aux, _ = _train_apply(argmin_model, variables, images)
  np.testing.assert_array_equal(argmin_aux['selected_prototype'], argmin_aux['nearest_prototype'])


def test_feature_queue_fills_front_first_and_joins_the_balance():
  _, model, variables = _digits_model(prototype_assignment='sinkhorn', prototype_queue_size=5)
  queue = variables['batch_stats']['memory']
  assert queue['feature_queue'].shape == (5, 16) and int(queue['feature_queue_filled']) == 0
  first = jax.random.uniform(jax.random.PRNGKey(3), (3, 8, 8, 1), minval=-1, maxval=1)
  second = jax.random.uniform(jax.random.PRNGKey(4), (3, 8, 8, 1), minval=-1, maxval=1)
  first_features = _train_features(model, variables, first)
  _, variables = _train_apply(model, variables, first)
  memory = variables['batch_stats']['memory']
  assert int(memory['feature_queue_filled']) == 3
  np.testing.assert_allclose(memory['feature_queue'][:3], first_features, rtol=1e-5, atol=1e-6)
  # The second batch is balanced together with the three queued features (the two empty slots take no share).
  second_features = _train_features(model, variables, second)
  aux, variables = _train_apply(model, variables, second)
  rows = jnp.concatenate([second_features, first_features])
  codes = prototypes.sinkhorn(-prototypes.euclidean_distances(rows, variables['params']['memory']['prototypes']),
                              epsilon=0.05, num_iters=3)[:3]
  np.testing.assert_array_equal(aux['selected_prototype'], np.argmax(codes, axis=-1))
  memory = variables['batch_stats']['memory']
  assert int(memory['feature_queue_filled']) == 5  # full; the oldest feature fell off the end
  np.testing.assert_allclose(memory['feature_queue'][:3], second_features, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(memory['feature_queue'][3:], first_features[:2], rtol=1e-5, atol=1e-6)


def test_queue_size_is_part_of_the_checkpoint_signature_only_when_used():
  config = digits_pdm.get_config()
  assert 'prototype_queue_size' not in checkpoints.model_signature(config, (8, 8, 1), 10)
  config.model.prototype_queue_size = 64
  assert checkpoints.model_signature(config, (8, 8, 1), 10)['prototype_queue_size'] == 64
  config.model.prototype_assignment = 'argmin'
  assert 'prototype_queue_size' not in checkpoints.model_signature(config, (8, 8, 1), 10)


@pytest.mark.parametrize('field, value, message', [
    ('model.prototype_assignment', 'nearest', r"model.prototype_assignment='nearest' is unknown: use one of argmin"),
    ('model.sinkhorn_epsilon', 0.0, r'model.sinkhorn_epsilon=0.0 must be > 0'),
    ('model.sinkhorn_iters', 0, r'model.sinkhorn_iters=0 must be an integer >= 1'),
    ('model.prototype_queue_size', -1, r'model.prototype_queue_size=-1 must be >= 0'),
    ('model.num_prototypes', 200, r'balances 128 features per step .* over 200 prototypes: raise '
                                  r'model.prototype_queue_size to at least 272'),
])
def test_bad_assignment_settings_stop_before_training(field, value, message):
  config = digits_pdm.get_config()
  section, name = field.split('.')
  config[section][name] = value
  with pytest.raises(ValueError, match=message):
    preflight.check(config, 'train')


def test_health_by_hand():
  ids = np.array([0] * 97 + [1] * 2 + [2])  # shares 0.97, 0.02, 0.01, 0
  labels = np.array([0] * 50 + [1] * 50)
  result = prototype_health.health(ids, 4, labels)
  assert result['prototypes_in_use'] == 3
  shares = np.array([0.97, 0.02, 0.01])
  np.testing.assert_allclose(result['prototype_usage_entropy'], -np.sum(shares * np.log(shares)), rtol=1e-9)
  np.testing.assert_allclose(result['prototype_usage_entropy_max'], np.log(4))
  assert 0 < result['prototype_class_nmi'] < 0.2
  perfect = prototype_health.health(labels, 4, labels)
  assert perfect['prototypes_in_use'] == 2 and np.isclose(perfect['prototype_class_nmi'], 1.0)
  assert 'prototype_class_nmi' not in prototype_health.health(ids, 4)


def test_dataset_health_counts_every_digit_with_labels():
  config, model, variables = _digits_model()
  config.data.use_labels = False  # PDM trains without labels; the health pass still finds them for the NMI
  features, ids, labels = prototype_health.dataset_assignments(model, variables, config)
  assert len(ids) == len(labels) == len(features) == 1797 and features.shape[1] == 16
  _, expected = model.apply(variables, jnp.asarray(_digits_images()[:len(ids)]), method=model.nearest_prototypes)
  np.testing.assert_array_equal(ids, expected)
  result = prototype_health.dataset_health(model, variables, config)
  assert result['num_images'] == len(ids) and 'prototype_class_nmi' in result


def _digits_images():
  from pdm_jax.data import digits
  return digits.load_digits_arrays()[0]

"""Prototype memory: the reference's losses (checked against a torch transcription), selection, encoder."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdm_jax.models import factory
from pdm_jax.models import prototypes
from tests.conftest import tiny_config


def test_sinusoid_matches_reference_table():
  """Row t of the reference's (T, D) table: sin(t*div) at even columns, cos at odd, div = 10000^(-2i/D)."""
  num_timesteps, dim = 40, 16
  position = np.arange(num_timesteps, dtype=np.float64)[:, None]
  div = np.exp(np.arange(0, dim, 2) * -(math.log(10000.0) / dim))
  table = np.zeros((num_timesteps, dim))
  table[:, 0::2] = np.sin(position * div)
  table[:, 1::2] = np.cos(position * div)
  t = jnp.array([0, 1, 17, 39])
  np.testing.assert_allclose(prototypes.timestep_sinusoid(t, dim), table[[0, 1, 17, 39]], atol=1e-5)


def test_losses_match_torch_transcription_of_reference():
  torch = pytest.importorskip('torch')
  functional = torch.nn.functional
  rng = np.random.default_rng(0)
  features = rng.normal(size=(12, 8)).astype(np.float32)
  bank = rng.normal(size=(5, 8)).astype(np.float32)
  tau, alpha, beta = 0.7, 1.3, 0.5
  # The reference PrototypeModule.compute_loss (PDM), written out with torch ops.
  f, p = torch.tensor(features), torch.tensor(bank)
  distances = torch.cdist(f, p)
  indices = distances.argmin(dim=1)
  contrastive = functional.cross_entropy(-tau * distances, indices)
  align = functional.mse_loss(f, p[indices])
  unit = functional.normalize(p, dim=1)
  compact = ((unit @ unit.T - torch.eye(5))**2).sum()
  expected = (contrastive + alpha * align + beta * compact).item()
  ours = prototypes.prototype_losses(jnp.asarray(features), jnp.asarray(bank), jnp.asarray(indices.numpy()),
                                     tau=tau, alpha=alpha, beta=beta)
  np.testing.assert_allclose(float(ours['prototype_loss']), expected, rtol=1e-5)
  np.testing.assert_allclose(float(ours['compact_loss']), compact.item(), rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(ours['nearest_prototype']), indices.numpy())


def test_compactness_is_zero_for_orthogonal_prototypes():
  assert float(prototypes.compactness_loss(3.0 * jnp.eye(4))) == pytest.approx(0.0, abs=1e-6)
  # Two identical unit vectors: off-diagonal cosine 1 counted twice.
  assert float(prototypes.compactness_loss(jnp.ones((2, 3)))) == pytest.approx(2.0, rel=1e-5)


@pytest.mark.parametrize('size,convs', [(4, 2), (8, 3), (12, 3), (16, 4), (32, 4)])
def test_encoder_depth_follows_image_size(size, convs):
  encoder = prototypes.FeatureEncoder(feature_dim=6)
  variables = encoder.init(jax.random.PRNGKey(0), jnp.zeros((2, size, size, 3)))
  assert sum(name.startswith('conv_') for name in variables['params']) == convs
  assert encoder.apply(variables, jnp.ones((2, size, size, 3))).shape == (2, 6)


def test_encoder_rejects_tiny_images():
  with pytest.raises(ValueError, match='too small'):
    prototypes.encoder_depth(2)


def test_kaiming_uniform_bound():
  values = np.asarray(prototypes.kaiming_uniform(0.1)(jax.random.PRNGKey(0), (200, 50)))
  bound = math.sqrt(2.0 / 1.01) * math.sqrt(3.0 / 50)
  assert values.max() <= bound and values.min() >= -bound and values.max() > 0.95 * bound


def _model_and_variables(model_type, **model_fields):
  config = tiny_config(model_type)
  config.model.update(model_fields)
  model = factory.build_model(config.model, image_size=8, num_channels=1, num_classes=10)
  images = jax.random.normal(jax.random.PRNGKey(1), (6, 8, 8, 1))
  labels = jnp.arange(6) % 10
  variables = model.init(jax.random.PRNGKey(0), images, jnp.zeros((6,), jnp.int32), clean_images=images,
                         labels=labels)
  return model, variables, images, labels


def test_spdm_training_and_sampling_paths_use_the_same_token():
  """A training call conditioned by labels equals a sampling call given those labels as prototype ids."""
  model, variables, images, labels = _model_and_variables('spdm')
  t = jnp.array([0, 3, 7, 11, 30, 49])
  trained, aux = model.apply(variables, images, t, clean_images=images, labels=labels)
  sampled, _ = model.apply(variables, images, t, prototype_ids=labels)
  np.testing.assert_allclose(trained, sampled, atol=1e-6)
  np.testing.assert_array_equal(aux['selected_prototype'], labels)
  assert float(aux['compact_loss']) == 0.0  # s-PDM has no beta term


def test_pdm_selects_nearest_prototype_and_output_depends_on_it():
  model, variables, images, _ = _model_and_variables('pdm', prototype_assignment='argmin')
  t = jnp.full((6,), 10)
  _, aux = model.apply(variables, images, t, clean_images=images)
  features = model.apply(variables, images, method=lambda m, x: m.memory.encode(x))
  bank = variables['params']['memory']['prototypes']
  expected = np.argmin(((np.asarray(features)[:, None] - np.asarray(bank)[None])**2).sum(-1), axis=1)
  np.testing.assert_array_equal(aux['selected_prototype'], expected)
  first, _ = model.apply(variables, images, t, prototype_ids=jnp.zeros((6,), jnp.int32))
  second, _ = model.apply(variables, images, t, prototype_ids=jnp.ones((6,), jnp.int32))
  assert float(jnp.max(jnp.abs(first - second))) > 1e-6


@pytest.mark.parametrize('assignment', ['argmin', 'sinkhorn'])
def test_encoder_learns_only_from_prototype_loss(assignment):
  """The selection (argmin, or Sinkhorn's argmax) passes no gradient: the diffusion output is flat in f_phi's
  parameters."""
  model, variables, images, _ = _model_and_variables('pdm', prototype_assignment=assignment)
  t = jnp.full((6,), 5)

  def output_sum(params):
    out, _ = model.apply({**variables, 'params': params}, images, t, clean_images=images)
    return jnp.sum(out)

  grads = jax.jit(jax.grad(output_sum))(variables['params'])
  encoder_grad = jax.tree.leaves(grads['memory']['f_phi'])
  assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in encoder_grad)
  assert float(jnp.max(jnp.abs(grads['memory']['prototypes']))) > 0.0

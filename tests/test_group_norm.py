"""GroupNorm with the hand-written backward: forward and gradients against torch.nn.GroupNorm (float64)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from pdm_jax.models import group_norm


def _reference(x, scale, bias, num_groups, epsilon):
  """The definition, in float64 numpy-style jax: (x - group mean) / sqrt(group var + eps) * scale + bias."""
  b, h, w, c = x.shape
  grouped = x.reshape(b, h * w, num_groups, c // num_groups)
  mean = grouped.mean(axis=(1, 3), keepdims=True)
  var = ((grouped - mean) ** 2).mean(axis=(1, 3), keepdims=True)
  return ((grouped - mean) / jnp.sqrt(var + epsilon)).reshape(x.shape) * scale + bias


@pytest.fixture
def inputs():
  kx, ks, kb, kw = jax.random.split(jax.random.PRNGKey(0), 4)
  x = 2.0 + 3.0 * jax.random.normal(kx, (3, 5, 4, 16))  # an offset mean: the two-pass variance must handle it
  return (x, 1 + 0.5 * jax.random.normal(ks, (16,)), jax.random.normal(kb, (16,)),
          jax.random.normal(kw, (3, 5, 4, 16)))


def _torch_reference(x, scale, bias, weights, num_groups):
  """torch.nn.GroupNorm in float64 on NCHW: the output and d/d(x, scale, bias) of sum(sin(out) * weights)."""
  to_torch = lambda a: torch.tensor(np.asarray(a, np.float64), requires_grad=True)
  tx, ts, tb = to_torch(np.transpose(x, (0, 3, 1, 2))), to_torch(scale), to_torch(bias)
  out = torch.nn.functional.group_norm(tx, num_groups, ts, tb, eps=1e-5)
  (torch.sin(out) * torch.tensor(np.transpose(np.asarray(weights, np.float64), (0, 3, 1, 2)))).sum().backward()
  nhwc = lambda t: np.transpose(t.detach().numpy(), (0, 2, 3, 1))
  return nhwc(out), [nhwc(tx.grad), ts.grad.numpy(), tb.grad.numpy()]


@pytest.mark.parametrize('num_groups', [1, 4, 16])
def test_forward_and_gradients_match_torch(inputs, num_groups):
  x, scale, bias, weights = inputs
  ours = lambda x, s, b: jnp.sum(jnp.sin(group_norm.group_norm(x, s, b, num_groups, 1e-5)) * weights)
  expected_out, expected_grads = _torch_reference(x, scale, bias, weights, num_groups)
  np.testing.assert_allclose(group_norm.group_norm(x, scale, bias, num_groups), expected_out, atol=1e-5, rtol=1e-5)
  for got, expected in zip(jax.grad(ours, argnums=(0, 1, 2))(x, scale, bias), expected_grads, strict=True):
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_module_is_flax_groupnorm_with_the_same_parameters(inputs):
  x, scale, bias, weights = inputs
  theirs = nn.GroupNorm(num_groups=4, epsilon=1e-5, use_fast_variance=False)
  ours = group_norm.GroupNorm(num_groups=4, epsilon=1e-5)
  variables = {'params': {'scale': scale, 'bias': bias}}
  assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(1), x)) == jax.tree.map(
      jnp.shape, theirs.init(jax.random.PRNGKey(1), x))
  np.testing.assert_allclose(ours.apply(variables, x), theirs.apply(variables, x), atol=1e-5, rtol=1e-5)
  loss = lambda module: lambda v: jnp.sum(module.apply(v, x) * weights)
  for got, expected in zip(jax.tree.leaves(jax.grad(loss(ours))(variables)),
                           jax.tree.leaves(jax.grad(loss(theirs))(variables)), strict=True):
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_bfloat16_output_with_float32_statistics_and_gradients(inputs):
  x, scale, bias, weights = inputs
  out = group_norm.group_norm(x.astype(jnp.bfloat16), scale, bias, 4, dtype=jnp.bfloat16)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), _reference(x, scale, bias, 4, 1e-5), atol=0.05)
  grads = jax.grad(lambda x, s: jnp.sum(group_norm.group_norm(x, s, bias, 4, dtype=jnp.bfloat16)
                                        .astype(jnp.float32) * weights), argnums=(0, 1))(x.astype(jnp.bfloat16), scale)
  assert grads[0].dtype == jnp.bfloat16 and grads[1].dtype == jnp.float32


def test_channels_must_split_into_the_groups():
  with pytest.raises(ValueError, match='divisible by num_groups=3'):
    group_norm.group_norm(jnp.zeros((1, 2, 2, 4)), jnp.ones(4), jnp.zeros(4), 3)

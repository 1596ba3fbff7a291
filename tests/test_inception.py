"""Parity of the flax FID Inception with pytorch-fid's InceptionV3 (random weights), and the weights loader."""

import warnings

import jax
import numpy as np
import pytest

from pdm_jax import torch_weights
from pdm_jax.evaluation import inception
from pdm_jax.evaluation import inception_weights
from pdm_jax.evaluation import metrics

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')
pytorch_fid_inception = pytest.importorskip('pytorch_fid.inception')

PARITY_RTOL = 1e-4


def _random_fid_torch_network(seed: int):
  """pytorch-fid's network structure (as fid_inception_v3 builds it) with seeded random weights and BN statistics."""
  net = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
  blocks = pytorch_fid_inception
  net.Mixed_5b = blocks.FIDInceptionA(192, pool_features=32)
  net.Mixed_5c = blocks.FIDInceptionA(256, pool_features=64)
  net.Mixed_5d = blocks.FIDInceptionA(288, pool_features=64)
  net.Mixed_6b = blocks.FIDInceptionC(768, channels_7x7=128)
  net.Mixed_6c = blocks.FIDInceptionC(768, channels_7x7=160)
  net.Mixed_6d = blocks.FIDInceptionC(768, channels_7x7=160)
  net.Mixed_6e = blocks.FIDInceptionC(768, channels_7x7=192)
  net.Mixed_7b = blocks.FIDInceptionE_1(1280)
  net.Mixed_7c = blocks.FIDInceptionE_2(2048)
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, tensor in net.state_dict().items():
      if name.endswith('num_batches_tracked'):
        continue
      if tensor.ndim >= 2:  # He-scaled weights keep activations O(1) through 94 layers
        tensor.copy_(torch.randn(tensor.shape, generator=generator) * (2.0 / tensor[0].numel())**0.5)
      elif name.endswith(('running_var', 'bn.weight')):  # positive scales and variances
        tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
      else:  # BN shifts, running means, fc bias
        tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
  return net


@pytest.fixture(scope='module')
def weights_file(tmp_path_factory):
  path = tmp_path_factory.mktemp('weights') / 'random_fid_inception.pth'
  torch.save(_random_fid_torch_network(seed=0).state_dict(), path)
  return path


@pytest.fixture(scope='module')
def torch_reference(weights_file):
  """pytorch-fid's own InceptionV3 wrapper (resize + scaling + network), loading our file instead of downloading."""
  original = pytorch_fid_inception.load_state_dict_from_url
  pytorch_fid_inception.load_state_dict_from_url = lambda url, **kwargs: torch.load(weights_file)
  try:
    model = pytorch_fid_inception.InceptionV3([3]).eval()
  finally:
    pytorch_fid_inception.load_state_dict_from_url = original
  fc = torch.load(weights_file)

  def run(images_uint8: np.ndarray) -> dict:
    with torch.no_grad():
      x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 255.0
      if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
      pool = model(x)[0][:, :, 0, 0]
      return {'pool': pool.numpy(), 'logits': (pool @ fc['fc.weight'].T + fc['fc.bias']).numpy()}
  return run


@pytest.fixture(scope='module')
def variables(weights_file):
  return inception_weights.load_inception_variables(weights_file)


@pytest.fixture(scope='module')
def extractor(variables):
  return inception.InceptionFeatureExtractor(variables, batch_size=2)


def _relative_error(ours, reference):
  return float(np.abs(ours - reference).max() / np.abs(reference).max())


@pytest.mark.parametrize('shape', [(2, 32, 32, 3), (2, 64, 64, 3), (2, 299, 299, 3), (2, 48, 80, 3),
                                   (2, 28, 28, 1)])
def test_network_matches_pytorch_fid(shape, extractor, torch_reference, record_property):
  images = np.random.default_rng(shape[1]).integers(0, 256, shape, dtype=np.uint8)
  ours = extractor(images)
  reference = torch_reference(images)
  errors = {key: _relative_error(ours[key], reference[key]) for key in ('pool', 'logits')}
  record_property('relative_errors', errors)
  print(f'\nparity {shape}: max |ours - torch| / max |torch|: {errors}')
  assert ours['pool'].shape == (shape[0], 2048) and ours['logits'].shape == (shape[0], 1008)
  assert np.abs(reference['pool']).mean() > 0.1  # the random network is not degenerate
  assert max(errors.values()) < PARITY_RTOL, errors


def test_module_jits_on_uint8_input_and_has_unbiased_logits(variables, extractor, weights_file):
  images = np.random.default_rng(1).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
  direct = jax.jit(inception.FIDInceptionV3().apply)(variables, images)
  batched = extractor(images)
  np.testing.assert_allclose(np.asarray(direct['pool']), batched['pool'], rtol=1e-5, atol=1e-5)
  bias = torch_weights.read_state_dict(weights_file)['fc.bias']
  np.testing.assert_allclose(batched['logits'] - bias, batched['logits_unbiased'], rtol=1e-5, atol=1e-5)


def test_extractor_batches_and_pads_consistently(extractor):
  images = np.random.default_rng(2).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
  whole = extractor(images)['pool']  # a batch of 2 and a padded batch of 1
  parts = extractor([images[:1], images[1:]])['pool']
  np.testing.assert_allclose(whole, parts, rtol=1e-5, atol=1e-5)
  float_input = extractor(images.astype(np.float32) / 255.0)['pool']
  np.testing.assert_allclose(whole, float_input, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('in_size', [8, 32, 299, 500])
def test_resize_matches_torch_interpolate(in_size):
  images = np.random.default_rng(in_size).random((1, in_size, in_size + 3, 3)).astype(np.float32)
  ours = np.asarray(inception.resize_to_input(images))
  reference = torch.nn.functional.interpolate(torch.from_numpy(images).permute(0, 3, 1, 2), size=(299, 299),
                                              mode='bilinear', align_corners=False).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(ours, reference, atol=2e-6)


def test_fid_grows_with_noise_through_the_network(extractor):
  rng = np.random.default_rng(3)
  # Smooth mock images: random 4x4 colour fields upsampled to 32x32.
  clean = np.kron(rng.random((4, 4, 4, 3)), np.ones((1, 8, 8, 1)))
  features = [extractor((clean + noise * rng.normal(size=clean.shape)).clip(0, 1).astype(np.float32))['pool']
              for noise in (0.0, 0.1, 0.3)]
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', RuntimeWarning)  # 4 samples in 2048 dims: singular by construction
    fids = [metrics.fid_from_features(features[0], other) for other in features[1:]]  # ~7 s each at 2048-d
  assert 0 < fids[0] < fids[1], fids


def test_legacy_torch_format_loads_identically(weights_file, tmp_path):
  state = torch.load(weights_file)
  legacy = tmp_path / 'legacy.pth'
  torch.save(state, legacy, _use_new_zipfile_serialization=False)
  ours = torch_weights.read_state_dict(legacy)
  assert set(ours) == set(state)
  for name, tensor in state.items():
    np.testing.assert_array_equal(ours[name], tensor.numpy())


def test_torchvision_inception_is_rejected(tmp_path):
  path = tmp_path / 'torchvision_inception.pth'
  net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
  torch.save(net.state_dict(), path)
  with pytest.raises(ValueError, match='not the FID Inception network: .*(AuxLogits|fc.weight)'):
    inception_weights.load_inception_variables(path)


def test_shape_mismatch_names_the_key(weights_file, tmp_path):
  state = torch.load(weights_file)
  state['Mixed_6b.branch7x7_2.conv.weight'] = torch.zeros(128, 128, 7, 1)
  path = tmp_path / 'transposed.pth'
  torch.save(state, path)
  with pytest.raises(ValueError, match=r'key Mixed_6b.branch7x7_2.conv.weight has shape \(128, 128, 7, 1\), '
                                       r'expected \(128, 128, 1, 7\)'):
    inception_weights.load_inception_variables(path)


def test_missing_tensor_is_reported(weights_file, tmp_path):
  state = torch.load(weights_file)
  del state['Mixed_7c.branch_pool.bn.running_var']
  path = tmp_path / 'incomplete.pth'
  torch.save(state, path)
  with pytest.raises(ValueError, match='1 tensors missing, e.g. Mixed_7c.branch_pool.bn.var'):
    inception_weights.load_inception_variables(path)


def test_pickled_module_is_refused(tmp_path):
  path = tmp_path / 'module.pth'
  torch.save(torch.nn.Linear(2, 2), path)
  with pytest.raises(ValueError, match='not a plain state dict'):
    torch_weights.read_state_dict(path)


def test_not_a_torch_file_is_refused(tmp_path):
  path = tmp_path / 'garbage.pth'
  path.write_bytes(b'not a checkpoint at all')
  with pytest.raises(ValueError, match='download the weights file again|download it again'):
    torch_weights.read_state_dict(path)


def test_missing_weights_offline_says_where_to_put_them(tmp_path, monkeypatch):
  monkeypatch.setenv(inception_weights.CACHE_DIR_ENV, str(tmp_path))
  expected = tmp_path / 'inception' / inception_weights.FID_WEIGHTS_FILENAME
  with pytest.raises(FileNotFoundError, match='copy it there'):
    inception_weights.find_or_download_weights(download=False)
  # An unreachable address (the discard port on this machine) fails fast, naming the destination.
  with pytest.raises(FileNotFoundError, match=f'copy it to {expected}'):
    inception_weights.download_weights(expected, url='http://127.0.0.1:9/weights.pth', timeout=2)
  assert list(expected.parent.iterdir()) == []  # no partial file left behind
  with pytest.raises(FileNotFoundError, match='no Inception weights file'):
    inception_weights.find_or_download_weights(tmp_path / 'nowhere.pth')


@pytest.mark.parametrize('images, match', [
    (np.zeros((2, 16, 16, 3), np.float32) + 2.0, r'\[0, 1\]'),
    (np.zeros((16, 16, 3), np.uint8), r'\(N, H, W, C\)'),
    (np.zeros((2, 16, 16, 4), np.uint8), '1 or 3'),
    (np.zeros((2, 16, 16, 3), np.int32), 'uint8 or float'),
])
def test_bad_images_raise(extractor, images, match):
  with pytest.raises(ValueError, match=match):
    extractor(images)

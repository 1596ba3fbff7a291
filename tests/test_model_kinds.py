"""Model kinds: declared once in models/kinds.py and asked everywhere else."""

import pathlib
import re

import jax
import numpy as np
import pytest

from pdm_jax.models import factory
from pdm_jax.models import kinds
from pdm_jax.training import checkpoints
from tests.tiny_configs import tiny_config

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'pdm_jax'
# A comparison with a model-kind name, or a tuple / list of them: what a spec replaces.
_KIND_NAMES = '|'.join(re.escape(name) for name in kinds.KINDS)
_COMPARISON = re.compile(rf"""(==|!=|\bin)\s*[(\[{{]?\s*['"]({_KIND_NAMES})['"]|['"]({_KIND_NAMES})['"]\s*(==|!=)""")
_KIND_FIELD = re.compile(r'\b(model_type|model\.type|\.model\.type)\b\s*(==|!=|\bin\b|not in)')


def _kind_comparisons(text: str) -> list[str]:
  return [line.strip() for line in text.splitlines()
          if _KIND_FIELD.search(line) or (_COMPARISON.search(line) and 'method' not in line)]


def test_the_grep_finds_what_it_looks_for():
  assert _kind_comparisons("  if model.model_type == 'pdm':")
  assert _kind_comparisons("  clean = images if config.model.type in ('pdm', 'spdm') else None")
  assert _kind_comparisons("  if x in ['cddpm', 'spdm']:")
  assert not _kind_comparisons("  if method == 'ddpm':")  # a sampler, not a model kind
  assert not _kind_comparisons("  kind = kinds.get(config.model.type)")


def test_no_model_kind_string_comparison_outside_models():
  found = {}
  for path in sorted(PACKAGE.rglob('*.py')):
    if path.parent.name == 'models':
      continue
    hits = _kind_comparisons(path.read_text())
    if hits:
      found[str(path.relative_to(PACKAGE))] = hits
  assert not found, f'ask models/kinds.py instead: {found}'


def test_every_kind_is_declared_with_a_known_conditioning():
  for name, kind in kinds.KINDS.items():
    assert kind.name == name and kind.conditioning in kinds.CONDITIONINGS
    assert kind.class_conditional == (kind.conditioning == 'label')
  with pytest.raises(ValueError, match="Unknown model.type='gan': use one of ddpm, cddpm, protodiffusion, pdm, spdm"):
    kinds.get('gan')


def test_conditions_drawn_for_sampling():
  rng = jax.random.key(0)
  assert kinds.get('ddpm').draw_conditions(5, 0, rng) is None
  np.testing.assert_array_equal(kinds.get('spdm').draw_conditions(7, 3, rng), [0, 1, 2, 0, 1, 2, 0])
  np.testing.assert_array_equal(kinds.get('cddpm').draw_conditions(4, 3, rng, choice=2), [2, 2, 2, 2])
  drawn = kinds.get('pdm').draw_conditions(2000, 10, rng)
  assert drawn.dtype == np.int32 and set(drawn.tolist()) == set(range(10))
  np.testing.assert_array_equal(drawn, kinds.get('pdm').draw_conditions(2000, 10, rng))  # the key decides
  with pytest.raises(ValueError, match=r'sample.label=3 is out of range: the model has classes 0\.\.2'):
    kinds.get('spdm').draw_conditions(4, 3, rng, choice=3)
  with pytest.raises(ValueError, match='unconditional'):
    kinds.get('ddpm').check_choice(1, 0)


def test_number_of_conditions():
  assert kinds.get('spdm').num_conditions(num_prototypes=50, num_classes=10) == 10
  assert kinds.get('pdm').num_conditions(num_prototypes=50, num_classes=10) == 50
  assert kinds.get('ddpm').num_conditions(num_prototypes=50, num_classes=10) == 0
  with pytest.raises(ValueError, match='needs labels'):
    kinds.get('cddpm').num_conditions(num_prototypes=50, num_classes=None)
  with pytest.raises(ValueError, match='at least one prototype'):
    kinds.get('pdm').num_conditions(num_prototypes=0, num_classes=None)


@pytest.mark.parametrize('name', list(kinds.KINDS))
def test_init_inputs_reach_every_parameter_of_the_kind(name):
  model = factory.build_model(tiny_config(name).model, image_size=8, num_channels=1, num_classes=10)
  args, kwargs = model.kind.init_inputs((8, 8, 1))
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kwargs))['params']
  assert ('memory' in params) == model.kind.prototype_memory
  class_embedding = any('class_embedding' in jax.tree_util.keystr(path)
                        for path, _ in jax.tree_util.tree_leaves_with_path(params))
  assert class_embedding == (name == 'cddpm')
  # ProtoDiffusion's class embedding: K rows of prototype_dim (stage 1's centres), projected to the time embedding.
  assert ('class_centres' in params) == ('class_projection' in params['unet']) == model.kind.class_prototypes
  if model.kind.class_prototypes:
    assert params['class_centres'].shape == (10, 16)


def test_signature_holds_only_the_fields_that_shape_the_kind(tmp_path):
  ddpm = checkpoints.model_signature(tiny_config('ddpm'), (8, 8, 1), 0)
  assert 'num_prototypes' not in ddpm and 'prototype_dim' not in ddpm
  protodiffusion = checkpoints.model_signature(tiny_config('protodiffusion'), (8, 8, 1), 10)
  assert protodiffusion['num_prototypes'] == 10 and protodiffusion['prototype_dim'] == 16
  spdm = checkpoints.model_signature(tiny_config('spdm'), (8, 8, 1), 10)
  assert spdm['num_prototypes'] == 10 and spdm['prototype_dim'] == 16 and spdm['model_type'] == 'spdm'
  # A ddpm directory written when every signature held the prototype fields still serves a ddpm run.
  checkpointer = checkpoints.Checkpointer(str(tmp_path), 10, 1)
  checkpointer.check_signature(dict(ddpm, num_prototypes=10, prototype_dim=64))
  checkpointer.check_signature(ddpm)
  with pytest.raises(checkpoints.CheckpointError, match='different model'):
    checkpointer.check_signature(spdm)
  checkpointer.close()

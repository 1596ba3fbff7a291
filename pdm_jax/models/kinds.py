"""Each model kind declared once: its conditioning, how many conditions it has, its init inputs, how conditions are
drawn for sampling, and its extra loss terms. Code outside models/ asks the kind; it never compares kind names.

Adding a kind (say a guided baseline) means one entry in KINDS, plus what its network does in models/pdm.py.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

CONDITIONINGS = ('none', 'label', 'prototype')


@dataclasses.dataclass(frozen=True)
class ModelKind:
  """What the rest of the code needs to know about one value of model.type."""
  name: str
  # 'none': unconditional; 'label': the class chooses the condition (at training and sampling); 'prototype': f_phi's
  # nearest learned prototype at training, a random prototype per sample at sampling.
  conditioning: str
  prototype_memory: bool  # f_phi and K prototypes; the network is trained with the clean images
  loss_terms: tuple[str, ...]  # scalar terms besides the diffusion loss, as the network's aux reports them
  summary: str
  # ProtoDiffusion: the class embedding has model.prototype_dim columns (a Dense layer projects it to the time
  # embedding) and its rows can start as a prototype classifier's class centres (training/prototype_classifier.py).
  class_prototypes: bool = False

  @property
  def conditional(self) -> bool:
    return self.conditioning != 'none'

  @property
  def class_conditional(self) -> bool:
    """Whether the condition is a class label (training needs labelled data; sample ids are classes)."""
    return self.conditioning == 'label'

  @property
  def sample_ids_name(self) -> str | None:
    """What a sample's condition id is called in samples/*.npz: 'labels', 'prototype_ids' or None."""
    return {'label': 'labels', 'prototype': 'prototype_ids'}.get(self.conditioning)

  @property
  def grid_name(self) -> str:
    """A sample grid's name: 'samples_per_class' / 'samples_per_prototype' (a row per condition) or 'samples'."""
    return {'label': 'samples_per_class', 'prototype': 'samples_per_prototype'}.get(self.conditioning, 'samples')

  def num_conditions(self, num_prototypes: int, num_classes: int | None) -> int:
    """Number of conditions (classes or prototypes; 0 unconditional); a one-line ValueError if it cannot be met."""
    if self.conditioning == 'label':
      if not num_classes:
        raise ValueError(f'model.type={self.name} needs labels, but the dataset has none: use a labelled dataset '
                         '(data.use_labels=True) or model.type=pdm.')
      return int(num_classes)
    if self.conditioning == 'prototype':
      if num_prototypes < 1:
        raise ValueError(f'model.num_prototypes={num_prototypes}: {self.name} needs at least one prototype.')
      return int(num_prototypes)
    return 0

  def init_inputs(self, image_shape: tuple[int, int, int]) -> tuple[tuple[jax.Array, ...], dict[str, jax.Array]]:
    """(args, kwargs) for model.init: a one-image batch that reaches every parameter of this kind."""
    images = jnp.zeros((1, *image_shape), jnp.float32)
    zeros = jnp.zeros((1,), jnp.int32)
    kwargs = dict(train=False)
    if self.prototype_memory:
      kwargs['clean_images'] = images
    if self.conditional:
      kwargs.update(labels=zeros, prototype_ids=zeros)
    return (images, zeros), kwargs

  def check_choice(self, choice: int | None, num_conditions: int) -> None:
    """A one-line ValueError unless `choice` (a fixed class or prototype for sampling, or None) exists."""
    if choice is None:
      return
    field, things = ('label', 'classes') if self.class_conditional else ('prototype', 'prototypes')
    if not self.conditional:
      raise ValueError(f'sample.{field}={choice}, but model.type={self.name} is unconditional: leave it unset.')
    if not 0 <= choice < num_conditions:
      raise ValueError(f'sample.{field}={choice} is out of range: the model has {things} 0..{num_conditions - 1}.')

  def draw_conditions(self, num_samples: int, num_conditions: int, rng: jax.Array, choice: int | None = None,
                      ) -> np.ndarray | None:
    """(num_samples,) int32 condition ids for sampling, or None for an unconditional kind.

    Classes are balanced (0, 1, ..., 0, 1, ...); prototypes are drawn uniformly from rng. `choice` fixes every id to
    one class or prototype.
    """
    if not self.conditional:
      return None
    if choice is not None:
      self.check_choice(choice, num_conditions)
      return np.full((num_samples,), choice, np.int32)
    if self.class_conditional:
      return (np.arange(num_samples) % num_conditions).astype(np.int32)
    return np.asarray(jax.random.randint(rng, (num_samples,), 0, num_conditions), np.int32)


_PROTOTYPE_TERMS = ('prototype_loss', 'contrastive_loss', 'align_loss', 'compact_loss')

KINDS = {kind.name: kind for kind in (
    ModelKind('ddpm', conditioning='none', prototype_memory=False, loss_terms=(),
              summary='unconditional DDPM baseline'),
    ModelKind('cddpm', conditioning='label', prototype_memory=False, loss_terms=(),
              summary='class-conditional DDPM baseline (class embedding added to the time embedding)'),
    ModelKind('protodiffusion', conditioning='label', prototype_memory=False, loss_terms=(), class_prototypes=True,
              summary="ProtoDiffusion: class embedding started from a prototype classifier's class centres"),
    ModelKind('pdm', conditioning='prototype', prototype_memory=True, loss_terms=_PROTOTYPE_TERMS,
              summary='nearest of K learned prototypes conditions the UNet bottleneck'),
    ModelKind('spdm', conditioning='label', prototype_memory=True, loss_terms=_PROTOTYPE_TERMS,
              summary='one learned prototype per class, chosen by label'),
)}
MODEL_TYPES = tuple(KINDS)


def get(name: str) -> ModelKind:
  """The kind called `name` (model.type); a one-line ValueError naming the valid ones otherwise."""
  if name not in KINDS:
    raise ValueError(f'Unknown model.type={name!r}: use one of {", ".join(KINDS)}.')
  return KINDS[name]

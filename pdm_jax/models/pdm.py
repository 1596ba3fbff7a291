"""The denoiser of every model kind (models/kinds.py): a UNet, conditioned for PDM / s-PDM on one prototype token,
for the class-conditional baselines on a class embedding added to the time embedding."""

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from pdm_jax.models import kinds
from pdm_jax.models import prototypes as prototypes_lib
from pdm_jax.models.unet import UNet2D

# ProtoDiffusion's class embedding: rows 0..K-1 (one per class; stage 1 sets them to the class centres) and the null
# row of classifier-free guidance, two parameters so the rows can be frozen without the null row.
CLASS_CENTRES = 'class_centres'
NULL_CLASS_EMBEDDING = 'null_class_embedding'


class DiffusionModel(nn.Module):
  """(x_t, t) -> (network output, aux): aux holds the prototype loss terms when clean images are given."""
  model_type: str
  unet_config: Mapping[str, Any]
  num_prototypes: int = 0
  prototype_dim: int = 0
  tau: float = 1.0
  alpha: float = 1.0
  beta: float = 1.0
  # PDM's choice of prototype per image at training (prototypes.ASSIGNMENTS) and Sinkhorn's settings.
  prototype_assignment: str = 'argmin'
  sinkhorn_epsilon: float = 0.05
  sinkhorn_iters: int = 3
  prototype_queue_size: int = 0
  # Classifier-free guidance (class-conditional kinds): a learned null condition that label dropout trains.
  null_class: bool = False
  dtype: Any = jnp.float32  # compute dtype of the UNet and f_phi; parameters, losses and outputs stay float32

  @property
  def kind(self) -> kinds.ModelKind:
    """The declaration of this model's kind: conditioning, loss terms, sampling conditions."""
    return kinds.get(self.model_type)

  @nn.nowrap
  def make_unet(self) -> UNet2D:
    """The UNet this kind conditions (setup's, and an unbound copy for exporters that need its settings)."""
    kind = self.kind
    return UNet2D(
        **self.unet_config,
        bottleneck_attention=kind.prototype_memory,
        # Label conditioning without a prototype memory is a class embedding added to the time embedding.
        num_class_embeds=(self.num_prototypes + int(self.null_class) if kind.class_conditional
                          and not kind.prototype_memory and not kind.class_prototypes else None),
        dtype=self.dtype)

  def setup(self):
    kind = self.kind
    self.unet = self.make_unet()
    if kind.class_prototypes:
      # N(0, 1) as torch's nn.Embedding: the 'regular' start; stage 1 overwrites the class rows with its centres.
      embedding_init = nn.initializers.normal(1.0)
      self.class_centres = self.param(CLASS_CENTRES, embedding_init, (self.num_prototypes, self.prototype_dim))
      if self.null_class:
        self.null_class_embedding = self.param(NULL_CLASS_EMBEDDING, embedding_init, (self.prototype_dim,))
    if kind.prototype_memory:
      balanced = self.prototype_assignment == 'sinkhorn' and not kind.class_conditional
      self.memory = prototypes_lib.PrototypeMemory(self.num_prototypes, self.prototype_dim, self.dtype,
                                                   queue_size=self.prototype_queue_size if balanced else 0)
      if self.null_class:
        # s-PDM's unconditional token: the prototype slot of a dropped label (the prototypes stay one per class).
        self.null_token = self.param('null_token', nn.initializers.zeros, (self.prototype_dim,))

  def __call__(self, x_t: jax.Array, t: jax.Array, *, clean_images: jax.Array | None = None,
               labels: jax.Array | None = None, prototype_ids: jax.Array | None = None,
               drop_condition: jax.Array | None = None, train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """x_t (B, H, W, C), t (B,) -> ((B, H, W, C) output, aux dict).

    Training passes clean_images (and labels for the class-conditional kinds); sampling passes prototype_ids (pdm: the
    drawn prototype, spdm / cddpm / protodiffusion: the class). drop_condition (B,) bool replaces the condition of
    those rows by the null class (label dropout at training, the unconditional half of classifier-free guidance at
    sampling); the prototype losses still use the labels.
    """
    t = jnp.broadcast_to(jnp.asarray(t), (x_t.shape[0],))
    kind = self.kind
    if not kind.conditional:
      return self.unet(x_t, t, train=train), {}
    if not kind.prototype_memory:
      classes = labels if labels is not None else prototype_ids
      if classes is None:
        raise ValueError(f'{kind.name} needs class labels: pass labels= (training) or prototype_ids= (sampling).')
      if kind.class_prototypes:
        vectors = self.class_centres[classes]
        if drop_condition is not None:
          vectors = jnp.where(self._check_null(drop_condition)[:, None], self.null_class_embedding[None, :], vectors)
        return self.unet(x_t, t, class_vectors=vectors, train=train), {}
      if drop_condition is not None:
        classes = jnp.where(self._check_null(drop_condition), self.num_prototypes, classes)
      return self.unet(x_t, t, class_labels=classes, train=train), {}

    aux: dict[str, jax.Array] = {}
    if clean_images is not None:
      features = self.memory.encode(clean_images, train=train)
      bank = self.memory.all_prototypes()
      targets = None
      if kind.class_conditional:
        if labels is None:
          raise ValueError('s-PDM needs labels with the clean images: use data with labels or model.type=pdm.')
        selected, beta = labels, 0.0
      elif self.prototype_assignment == 'sinkhorn':
        # Balanced codes are the cross-entropy's targets and their argmax the conditioning prototype: every
        # prototype keeps an equal share of the images, so none is starved (argmin collapses onto one).
        targets = self.memory.balanced_codes(features, epsilon=self.sinkhorn_epsilon, num_iters=self.sinkhorn_iters,
                                             update_queue=train and not self.is_initializing())
        selected, beta = jnp.argmax(targets, axis=-1), self.beta
      else:
        # The reference: the nearest prototype is the self-label; the encoder learns only through the prototype
        # losses.
        selected = jnp.argmin(prototypes_lib.euclidean_distances(features, bank), axis=-1)
        beta = self.beta
      aux = prototypes_lib.prototype_losses(features, bank, selected, tau=self.tau, alpha=self.alpha, beta=beta,
                                            targets=targets)
      aux['selected_prototype'] = selected
    elif prototype_ids is not None:
      selected = prototype_ids
    elif kind.class_conditional and labels is not None:
      selected = labels
    else:
      raise ValueError(f'{kind.name} needs clean_images (training) or prototype_ids (sampling).')
    condition = self.memory(selected)
    if drop_condition is not None:
      condition = jnp.where(self._check_null(drop_condition)[:, None], self.null_token[None, :], condition)
    token = condition + prototypes_lib.timestep_sinusoid(t, self.prototype_dim)
    return self.unet(x_t, t, context=token[:, None, :], train=train), aux

  def _check_null(self, drop_condition: jax.Array) -> jax.Array:
    if not self.null_class:
      raise ValueError(f'model.type={self.model_type} was built without a null class: classifier-free guidance '
                       'needs a model trained with train.label_dropout > 0.')
    return drop_condition

  def nearest_prototypes(self, clean_images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(B, H, W, C) clean images -> ((B, D) f_phi features, (B,) nearest prototype): how the memory sorts real images
    (BatchNorm in inference mode). Only for kinds with a prototype memory."""
    if not self.kind.prototype_memory:
      raise ValueError(f'model.type={self.model_type} has no prototypes to assign images to.')
    features = self.memory.encode(clean_images, train=False)
    return features, jnp.argmin(prototypes_lib.euclidean_distances(features, self.memory.all_prototypes()), axis=-1)

"""The reference PDM / s-PDM (b-faye/pdm) restated in PyTorch: the baseline of `benchmark.py --compare-torch`.

A diffusers UNet2DModel with nn.MultiheadAttention(C, 8) cross-attention from the bottleneck to one prototype token,
f_phi (conv 4x4 stride 2 stack, biases everywhere as the reference has), K learnable prototypes, token = prototype +
sinusoidal time embedding, and the reference's train step: eps-MSE + CE(-tau * cdist, target) + alpha * MSE(feature,
prototype) + beta * compactness, backward, global-norm clipping at 1, AdamW, cosine-with-warmup learning rate.

Imports torch and diffusers, never jax: import it before jax / TensorFlow (triton segfaults when loaded after them).
"""

import math
from typing import Any

import diffusers
import torch
import torch.nn.functional as F
from diffusers.models.unets import unet_2d
from diffusers.optimization import get_cosine_schedule_with_warmup
from torch import nn

# f_phi's widths before its last conv, as the reference (and pdm_jax.models.prototypes).
ENCODER_WIDTHS = (64, 128, 256)
# The reference hard-codes 8 heads in its bottleneck attention.
BOTTLENECK_HEADS = 8


class ReferenceUnet(diffusers.UNet2DModel):
  """UNet2DModel + the reference's residual bottleneck cross-attention between the down path and the mid block."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.bottleneck_attn = nn.MultiheadAttention(embed_dim=self.config.block_out_channels[-1],
                                                 num_heads=BOTTLENECK_HEADS, batch_first=True)

  def forward(self, sample: torch.Tensor, timestep: torch.Tensor,
              prototype: torch.Tensor | None = None) -> unet_2d.UNet2DOutput:
    """sample (B, C, H, W), timestep (B,) or scalar, prototype tokens (B, N, D) -> UNet2DOutput (B, C, H, W)."""
    if prototype is None:
      raise ValueError('the reference Unet needs prototype tokens (B, N, D): pass prototype=')
    timesteps = timestep * torch.ones(sample.shape[0], dtype=timestep.dtype, device=sample.device)
    emb = self.time_embedding(self.time_proj(timesteps).to(sample.dtype))
    sample = self.conv_in(sample)
    skips = (sample,)
    for block in self.down_blocks:
      sample, block_skips = block(hidden_states=sample, temb=emb)
      skips += block_skips
    b, c, h, w = sample.shape
    query = sample.view(b, c, h * w).transpose(1, 2)
    attended, _ = self.bottleneck_attn(query, prototype, prototype)
    sample = sample + attended.transpose(1, 2).reshape(b, c, h, w)
    sample = self.mid_block(sample, emb)
    for block in self.up_blocks:
      block_skips, skips = skips[-len(block.resnets):], skips[:-len(block.resnets)]
      sample = block(sample, block_skips, emb)
    sample = self.conv_out(self.conv_act(self.conv_norm_out(sample)))
    return unet_2d.UNet2DOutput(sample=sample)


def encoder_depth(image_size: int) -> int:
  """Stride-2 convs in f_phi: the reference's 4, fewer under 16 pixels (pdm_jax's rule, for tiny test configs)."""
  return min(4, int(math.floor(math.log2(image_size))))


class FeatureEncoder(nn.Module):
  """f_phi: (B, C, H, W) clean images -> (B, feature_dim): conv 4x4 s2 (+BatchNorm) + ReLU stack, average pool."""

  def __init__(self, in_channels: int, feature_dim: int, image_size: int):
    super().__init__()
    widths = ENCODER_WIDTHS[:encoder_depth(image_size) - 1] + (feature_dim,)
    layers: list[nn.Module] = []
    for i, width in enumerate(widths):
      layers.append(nn.Conv2d(in_channels if i == 0 else widths[i - 1], width, 4, 2, 1))
      if i == len(widths) - 1:
        break
      if i > 0:
        layers.append(nn.BatchNorm2d(width))
      layers.append(nn.ReLU())
    layers.append(nn.AdaptiveAvgPool2d((1, 1)))
    self.encoder = nn.Sequential(*layers)

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    return self.encoder(images).flatten(1)


def sinusoid_table(num_timesteps: int, dim: int) -> torch.Tensor:
  """(T, dim) table: row t holds sin(t * w_i) at even and cos(t * w_i) at odd columns, w_i = 10000^(-2i / dim)."""
  positions = torch.arange(num_timesteps, dtype=torch.float32)[:, None]
  freqs = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
  table = torch.zeros(num_timesteps, dim)
  table[:, 0::2] = torch.sin(positions * freqs)
  table[:, 1::2] = torch.cos(positions * freqs[:dim // 2])
  return table


class ReferencePDM(nn.Module):
  """(x_t, t, clean images [, labels]) -> (eps prediction, prototype loss); prototype ids instead when sampling."""

  def __init__(self, unet_config: dict[str, Any], num_prototypes: int, prototype_dim: int, num_timesteps: int,
               supervised: bool = False, tau: float = 1.0, alpha: float = 1.0, beta: float = 1.0):
    super().__init__()
    self.unet = ReferenceUnet(**unet_config)
    self.prototypes = nn.Parameter(torch.empty(num_prototypes, prototype_dim))
    nn.init.kaiming_uniform_(self.prototypes, a=0.1)
    self.f_phi = FeatureEncoder(unet_config['in_channels'], prototype_dim, unet_config['sample_size'])
    self.register_buffer('time_table', sinusoid_table(num_timesteps, prototype_dim), persistent=False)
    self.supervised, self.tau, self.alpha, self.beta = supervised, tau, alpha, beta

  def prototype_loss(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, D) features, (B,) target prototype indices -> contrastive + alpha * align + beta * compactness."""
    distances = torch.cdist(features, self.prototypes)
    loss = F.cross_entropy(-self.tau * distances, targets)
    loss = loss + self.alpha * F.mse_loss(features, self.prototypes[targets])
    if self.beta and not self.supervised:  # s-PDM has no compactness term
      unit = F.normalize(self.prototypes, dim=1)
      gram = unit @ unit.T
      loss = loss + self.beta * ((gram - torch.eye(gram.shape[0], device=gram.device)) ** 2).sum()
    return loss

  def forward(self, x_t: torch.Tensor, t: torch.Tensor, clean_images: torch.Tensor | None = None,
              labels: torch.Tensor | None = None,
              prototype_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x_t (B, C, H, W), t (B,) -> ((B, C, H, W) eps prediction, prototype loss or None when sampling)."""
    loss = None
    if clean_images is not None:
      features = self.f_phi(clean_images)
      # PDM conditions on the nearest prototype (an argmin: no gradient), s-PDM on the labelled one.
      targets = labels if self.supervised else torch.cdist(features, self.prototypes).argmin(dim=1)
      loss = self.prototype_loss(features, targets)
    else:
      targets = prototype_ids
    token = self.prototypes[targets] + self.time_table[t]
    return self.unet(x_t, t, prototype=token[:, None, :]).sample, loss


def unet_config(model_config, image_size: int, num_channels: int) -> dict[str, Any]:
  """diffusers UNet2DModel kwargs of a pdm-jax `config.model` on (image_size, image_size, num_channels) images."""
  return dict(sample_size=image_size, in_channels=num_channels, out_channels=num_channels,
              block_out_channels=tuple(model_config.block_out_channels),
              layers_per_block=model_config.layers_per_block,
              down_block_types=tuple(model_config.down_block_types),
              up_block_types=tuple(model_config.up_block_types),
              attention_head_dim=model_config.attention_head_dim,
              norm_num_groups=model_config.norm_num_groups, dropout=model_config.dropout)


def build_model(config, num_classes: int | None = None) -> ReferencePDM:
  """The reference model of a pdm-jax config (model.type 'pdm' or 'spdm'; spdm has num_classes prototypes)."""
  model_type = config.model.type
  if model_type not in ('pdm', 'spdm'):
    raise ValueError(f'model.type={model_type!r}: the torch reference is PDM or s-PDM only.')
  supervised = model_type == 'spdm'
  if supervised and not num_classes:
    raise ValueError('s-PDM needs num_classes (one prototype per class).')
  return ReferencePDM(
      unet_config(config.model, config.data.image_size, config.data.num_channels),
      num_prototypes=num_classes if supervised else config.model.num_prototypes,
      prototype_dim=config.model.prototype_dim, num_timesteps=config.diffusion.num_timesteps,
      supervised=supervised, tau=config.model.tau, alpha=config.model.alpha, beta=config.model.beta)


class ReferenceTrainer:
  """The reference's optimisation step (DDPMScheduler noise, AdamW, clipping, cosine warmup) on a ReferencePDM."""

  def __init__(self, model: ReferencePDM, config):
    self.model = model
    train = config.train
    self.noise_scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=config.diffusion.num_timesteps, beta_schedule=config.diffusion.schedule,
        beta_start=config.diffusion.beta_start, beta_end=config.diffusion.beta_end)
    self.optimizer = torch.optim.AdamW(model.parameters(), lr=train.learning_rate, weight_decay=train.weight_decay)
    self.lr_scheduler = get_cosine_schedule_with_warmup(
        self.optimizer, num_warmup_steps=train.warmup_steps, num_training_steps=train.num_steps)
    self.grad_clip_norm = train.grad_clip_norm
    self.num_timesteps = config.diffusion.num_timesteps

  def step(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """One update on clean images (B, C, H, W) in [-1, 1] (and labels (B,) for s-PDM); returns the loss."""
    self.model.train()
    noise = torch.randn_like(images)
    t = torch.randint(0, self.num_timesteps, (images.shape[0],), dtype=torch.long)
    x_t = self.noise_scheduler.add_noise(images, noise, t)
    prediction, prototype_loss = self.model(x_t, t, clean_images=images, labels=labels)
    loss = F.mse_loss(prediction, noise) + prototype_loss
    loss.backward()
    nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip_norm)
    self.optimizer.step()
    self.lr_scheduler.step()
    self.optimizer.zero_grad()
    return loss.detach()

  @torch.no_grad()
  def eps(self, x_t: torch.Tensor, t: torch.Tensor, prototype_ids: torch.Tensor) -> torch.Tensor:
    """One sampling-time network evaluation: (B, C, H, W) x_t, (B,) t and prototype ids -> eps prediction."""
    self.model.eval()
    return self.model(x_t, t, prototype_ids=prototype_ids)[0]


def count_parameters(model: nn.Module) -> int:
  """Trainable scalars of a torch module."""
  return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


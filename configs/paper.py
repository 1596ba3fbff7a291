"""The reference PDM / s-PDM recipe (b-faye/pdm), shared by the per-dataset configs.

Every reference run: diffusers UNet2DModel (128, 256, 256, 256) x 2 layers, attention at the second level,
prototype_dim 256, batch 64, AdamW lr 1e-4 (torch's default weight decay 0.01), 500 warmup steps then cosine
decay, 500 epochs, T = 2000 (PDM) or 1000 (s-PDM), linear betas 1e-4..0.02, epsilon prediction.
The baselines (ddpm, cddpm, protodiffusion) get the same UNet, data and budget with T = 1000.
"""

import ml_collections

from configs import default
from pdm_jax.models import kinds

# dataset name -> (image size, examples per epoch, K prototypes for PDM, extra data fields)
DATASETS = {
    'cifar10': (32, 50_000, 15, {}),
    'celeb_a': (176, 20_000, 2, dict(attribute='Male', examples_per_class=10_000)),
    'eurosat/rgb': (64, 27_000, 10, {}),
    'stl10': (96, 13_000, 10, dict(split='train+test')),
    'tiny_imagenet': (64, 50_000, 200, {}),  # 250 of the 500 training images per class
}
EPOCHS = 500
BATCH_SIZE = 64
# ProtoDiffusion's prototype classifier: 128-dimensional prototypes as its pretrained ones (seed README); its
# training length is not stated there, so 20 epochs (a small share of the diffusion budget) are an assumption.
PROTOTYPE_CLASSIFIER_EPOCHS = 20


def get_config(dataset: str, model_type: str) -> ml_collections.ConfigDict:
  """The reference run of `model_type` on `dataset`: 'pdm' or 'spdm' as the reference trains them, and the baselines
  'ddpm', 'cddpm' and 'protodiffusion' with the same UNet, data and budget (T = 1000; cddpm with min-SNR loss
  weighting, protodiffusion with plain epsilon MSE as its paper, both with label dropout 0.1 for classifier-free
  guidance; protodiffusion's class embedding starts from frozen prototype classifier centres of dimension 128)."""
  image_size, num_examples, num_prototypes, data_fields = DATASETS[dataset]
  config = default.get_config()
  config.model.type = model_type
  config.model.block_out_channels = (128, 256, 256, 256)
  config.model.layers_per_block = 2
  config.model.down_block_types = ('DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D', 'DownBlock2D')
  config.model.up_block_types = ('UpBlock2D', 'UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D')
  config.model.norm_num_groups = 32
  config.model.prototype_dim = 256
  config.model.num_prototypes = num_prototypes  # s-PDM uses the class count instead
  # PDM's balanced assignment needs more rows than prototypes: Tiny ImageNet (K = 200, batch 64) balances over a
  # queue of recent features too.
  config.model.prototype_queue_size = 0 if BATCH_SIZE >= 2 * num_prototypes else 512

  config.diffusion.num_timesteps = 2000 if model_type == 'pdm' else 1000

  config.data.name = dataset
  config.data.image_size = image_size
  config.data.num_channels = 3
  config.data.random_flip = True
  kind = kinds.get(model_type)
  config.data.use_labels = kind.class_conditional
  if kind.class_conditional and not kind.prototype_memory:  # the class-embedding baselines: guided
    config.train.label_dropout = 0.1
  if model_type == 'cddpm':
    config.diffusion.loss_weighting = 'min_snr'
  if kind.class_prototypes:
    config.model.prototype_dim = 128
    config.protodiffusion.mode = 'proto_frozen'  # the seed README's example run
    config.protodiffusion.classifier_steps = PROTOTYPE_CLASSIFIER_EPOCHS * num_examples // BATCH_SIZE
  config.data.update(data_fields)

  config.train.batch_size = BATCH_SIZE
  config.train.num_steps = EPOCHS * num_examples // BATCH_SIZE
  config.train.learning_rate = 1e-4
  config.train.warmup_steps = 500
  config.train.end_learning_rate_factor = 0.0
  config.train.weight_decay = 0.01
  config.train.ema_decay = 0.9999
  config.train.log_every = 500
  config.train.checkpoint_every = 5_000

  config.sample.num_samples = 64
  config.sample.batch_size = 64

  config.eval.num_samples = 50_000  # the reference's FID / KID / IS sample count
  config.eval.num_real = 50_000
  config.eval.every_steps = 50_000  # a periodic FID on a small sample set every ~64 CIFAR-10 epochs
  config.eval.periodic_num_samples = 1_000
  return config

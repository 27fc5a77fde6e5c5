"""GAN tasks: what the generator sees, what the discriminator compares, and the losses; pure, no I/O.

Three tasks (`config.task.name`):

* `gan`: G(z [, label]) against real images; `task.conditional` feeds the dataset's labels to both networks.
* `pix2pix`: G(image) -> target, D(image, target or G(image)) (PatchGAN); G's loss adds `l1_weight` x L1.
* `super_resolution`: G(downsample(image, scale)) -> image; D(bicubic(low-res), image or G(low-res));
  G's loss is `l1_weight` x L1 + `adversarial_weight` x adversarial. `adversarial_weight=0` trains the same
  generator with L1 only (D is then not updated), the baseline the GAN is measured against.
* Any task: `feature_weight` > 0 adds pix2pixHD's feature matching, the L1 distance between D's convolution
  outputs on real and on generated images (a perceptual loss that needs no pretrained network).

Images are in [-1, 1] (the loop rescales the data, see `medjax.gan.loop`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from medjax import schema
from medjax.errors import MedjaxError
from medjax.gan import losses
from medjax.image_metrics import bicubic_upsample, downsample
from medjax.models import gan as gan_models
from medjax.models import ops

TASKS = ("gan", "pix2pix", "super_resolution")
GENERATORS = {"dcgan": gan_models.DCGANGenerator, "pix2pix": gan_models.Pix2PixGenerator,
              "sr": gan_models.SRGenerator}
DISCRIMINATORS = {"dcgan": gan_models.DCGANDiscriminator, "patchgan": gan_models.PatchGANDiscriminator}


def _build(registry: dict, cfg: ml_collections.ConfigDict, what: str, **fixed: Any) -> nn.Module:
    if cfg.name not in registry:
        raise MedjaxError(f"unknown config.{what}.name={cfg.name!r}; known: {sorted(registry)}")
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k != "name"}
    kwargs.update(fixed)
    try:
        return registry[cfg.name](**kwargs)
    except TypeError as e:
        raise MedjaxError(f"config.{what}: {e} ({cfg.name!r})") from e


def conv_features(module: nn.Module, params: Any, stats: Any, *args: Any) -> list[jax.Array]:
    """The outputs of every convolution of `module` (eval mode), in call order: a discriminator's features."""
    variables = {"params": params, **({"batch_stats": stats} if stats else {})}
    _, captured = module.apply(variables, *args, train=False, mutable=["intermediates"],
                               capture_intermediates=lambda mdl, method: isinstance(mdl, (nn.Conv, ops.Conv)))
    return jax.tree.leaves(captured["intermediates"])


def feature_matching(d: nn.Module, d_params: Any, d_stats: Any, real_inputs: tuple, fake_inputs: tuple
                     ) -> jax.Array:
    """pix2pixHD's feature-matching loss: the mean over D's convolutions of mean |f(real) - f(fake)| (real
    features carry no gradient)."""
    real = [jax.lax.stop_gradient(f) for f in conv_features(d, d_params, d_stats, *real_inputs)]
    fake = conv_features(d, d_params, d_stats, *fake_inputs)
    return jnp.mean(jnp.stack([jnp.mean(jnp.abs(a - b)) for a, b in zip(real, fake)]))


def apply(module: nn.Module, params: Any, stats: Any, *args: Any, train: bool) -> tuple[Any, Any]:
    """module(*args) -> (output, new stats); statistics (BatchNorm, spectral norm) update only in training."""
    variables = {"params": params, **({"batch_stats": stats} if stats else {})}
    if train and stats:
        out, updates = module.apply(variables, *args, train=True, mutable=["batch_stats"])
        return out, updates["batch_stats"]
    return module.apply(variables, *args, train=train), stats


@dataclasses.dataclass(frozen=True)
class GANTask:
    """The networks and loss settings of one GAN run (built by `make_gan_task`)."""

    name: str
    generator: nn.Module
    discriminator: nn.Module
    loss: str
    latent_dim: int = 0
    conditional: bool = False
    scale: int = 1
    l1_weight: float = 0.0
    adversarial_weight: float = 1.0
    feature_weight: float = 0.0
    r1_gamma: float = 0.0

    @property
    def trains_discriminator(self) -> bool:
        return self.adversarial_weight > 0

    def generator_inputs(self, batch: dict, z: jax.Array | None) -> tuple:
        """The generator's positional inputs for `batch` (z: the batch's latent vectors, task `gan` only)."""
        if self.name == "gan":
            return (z, batch["label"]) if self.conditional else (z,)
        if self.name == "pix2pix":
            return (batch["image"],)
        return (downsample(batch["image"], self.scale),)

    def real(self, batch: dict) -> jax.Array:
        """What the generator should produce for `batch`: the image, or pix2pix's target."""
        return batch["target"] if self.name == "pix2pix" else batch["image"]

    def discriminator_inputs(self, batch: dict, images: jax.Array) -> tuple:
        """D's positional inputs judging `images` (real or generated) for `batch`."""
        if self.name == "gan":
            return (images, batch["label"]) if self.conditional else (images,)
        if self.name == "pix2pix":
            return (batch["image"], images)
        return (bicubic_upsample(downsample(batch["image"], self.scale), self.scale), images)

    def reconstruction(self, fake: jax.Array, batch: dict) -> jax.Array:
        """Mean absolute error against the paired target (0 for the unpaired `gan` task)."""
        if self.name == "gan":
            return jnp.zeros((), jnp.float32)
        return jnp.mean(jnp.abs(jnp.asarray(fake, jnp.float32) - self.real(batch)))

    def generator_objective(self, fake_logits: jax.Array, fake: jax.Array, batch: dict,
                            features: jax.Array | None = None) -> tuple[jax.Array, dict]:
        """G's total loss and its parts; `features` is the feature-matching term (None: not used)."""
        adv = losses.generator_loss(fake_logits, self.loss) if self.trains_discriminator else jnp.zeros(())
        l1 = self.reconstruction(fake, batch)
        total = self.adversarial_weight * adv + self.l1_weight * l1
        parts = {"g_adversarial": adv, "g_l1": l1}
        if features is not None:
            total = total + self.feature_weight * features
            parts["g_features"] = features
        return total, parts


def make_gan_task(config: ml_collections.ConfigDict, example: dict, num_classes: int,
                  axis_name: str | None) -> GANTask:
    """Build the networks from `config.generator` / `config.discriminator` and the data's shapes."""
    if config.task.name not in TASKS:
        raise MedjaxError(f"unknown GAN config.task.name={config.task.name!r}; known: {list(TASKS)}")
    t = schema.filled("task", config.task)
    losses.check_kind(t.loss)
    image = example["image"]
    spatial, channels = tuple(image.shape[1:-1]), int(image.shape[-1])
    fixed_g: dict[str, Any] = {}
    if config.generator.name == "dcgan":
        fixed_g = dict(image_size=spatial, channels=channels, bn_axis_name=axis_name,
                       num_classes=num_classes if t.conditional else 0)
    elif config.generator.name == "pix2pix":
        target = example.get("target")
        fixed_g = dict(channels=int(target.shape[-1]) if target is not None else channels, bn_axis_name=axis_name)
    elif config.generator.name == "sr":
        fixed_g = dict(channels=channels, scale=int(t.scale))
    fixed_d = {"num_classes": num_classes if t.conditional else 0} \
        if config.discriminator.name == "dcgan" else {}
    if t.name == "gan" and config.generator.name != "dcgan":
        raise MedjaxError(f"config.task.name='gan' needs config.generator.name='dcgan', got "
                          f"{config.generator.name!r}")
    if t.name != "gan" and config.discriminator.name != "patchgan":
        raise MedjaxError(f"config.task.name={t.name!r} compares image pairs: config.discriminator.name must be "
                          f"'patchgan', got {config.discriminator.name!r}")
    if t.name == "super_resolution" and any(s % int(t.scale) for s in spatial):
        raise MedjaxError(f"config.task.scale={t.scale}: image size {spatial} is not divisible by it")
    return GANTask(
        name=t.name,
        generator=_build(GENERATORS, config.generator, "generator", **fixed_g),
        discriminator=_build(DISCRIMINATORS, config.discriminator, "discriminator", **fixed_d),
        loss=t.loss,
        latent_dim=int(t.latent_dim),
        conditional=bool(t.conditional),
        scale=int(t.scale),
        l1_weight=float(t.l1_weight),
        adversarial_weight=float(t.adversarial_weight),
        feature_weight=float(t.feature_weight),
        r1_gamma=float(t.r1_gamma),
    )

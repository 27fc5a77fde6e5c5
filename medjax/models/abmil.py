"""Attention-based multiple-instance learning (ABMIL; Ilse, Tomczak & Welling, ICML 2018) for bags of tiles.

A bag (a slide) is K instances (tiles) (N, K, H, W, C) with a validity mask (N, K) for padded bags. Each tile goes
through the encoder, a medjax ResNet from the model registry named `encoder` whose `head` is the projection to
`embed_dim` features (so torchvision / MONAI ResNet weights import into `encoder/...` through
`config.init.from`, and `config.finetune.freeze=("encoder/stem_*", "encoder/stage*")` freezes the backbone but
keeps the projection trainable); h_k = ReLU(encoder(x_k)). Gated attention pooling (the paper's eq. 9):

    a_k = exp(w^T (tanh(V h_k) * sigmoid(U h_k))) / sum_j exp(w^T (tanh(V h_j) * sigmoid(U h_j)))

over the valid tiles only (padded tiles get a_k = 0 exactly); `gated=False` is eq. 8, w^T tanh(V h_k). The bag
embedding z = sum_k a_k h_k goes through the linear `classifier`. Because the a_k sum to 1 and the classifier is
linear, the slide logits equal sum_k a_k * (classifier(h_k)): the per-tile logits returned alongside are each
tile's share of the decision, and with the attention they make the tile-level heat maps.

Every bag needs at least one valid tile. In training, padded tiles still pass through the encoder's BatchNorm
with the real ones (their statistics include them); draw full bags (`data.bag_size` no larger than the slides'
tile counts) or freeze BatchNorm (`config.finetune.freeze_batch_stats`) to keep them out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from medjax.errors import MedjaxError

ENCODERS = ("resnet", "resnet18", "resnet34", "resnet50")


def masked_softmax(scores: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax over the last axis among the entries where `mask` > 0; masked entries are exactly 0."""
    valid = mask > 0
    scores = jnp.where(valid, scores, -jnp.inf)
    e = jnp.where(valid, jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True)), 0.0)
    return e / jnp.sum(e, axis=-1, keepdims=True)


class GatedAttention(nn.Module):
    """Attention weights (N, K) of instance features (N, K, E) under `mask` (N, K): the ABMIL pooling weights."""

    attention_dim: int = 128
    gated: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array, mask: jax.Array) -> jax.Array:
        v = jnp.tanh(nn.Dense(self.attention_dim, dtype=self.dtype, name="V")(h))
        if self.gated:
            v = v * jax.nn.sigmoid(nn.Dense(self.attention_dim, dtype=self.dtype, name="U")(h))
        scores = nn.Dense(1, dtype=self.dtype, name="w")(v)[..., 0].astype(jnp.float32)
        return masked_softmax(scores, mask)


class ABMIL(nn.Module):
    """Tile encoder + gated attention pooling + linear classifier. `__call__(x (N, K, H, W, C), instance_mask
    (N, K) or None, train)` returns (slide logits (N, num_classes), attention (N, K), tile logits (N, K,
    num_classes)), all float32.

    Encoder fields: `encoder` (a registered ResNet: resnet18/34/50, or `resnet` with `stage_sizes` and `block`),
    `stem`, `width`, `norm`; `embed_dim` is the encoder head's output (the tile features). Pooling:
    `attention_dim`, `gated`."""

    num_classes: int
    encoder: str = "resnet18"
    embed_dim: int = 512
    attention_dim: int = 128
    gated: bool = True
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    block: str = "basic"
    stem: str = "standard"
    width: int = 64
    norm: str = "batch"
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32
    remat: bool = False

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise MedjaxError(f"abmil encoder {self.encoder!r} must be one of {list(ENCODERS)}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, instance_mask: jax.Array | None = None,
                 train: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
        from medjax.models import MODELS  # the registry imports this module

        if x.ndim < 4:
            raise MedjaxError(f"abmil expects bags (N, K, *spatial, C), got shape {x.shape}")
        n, k = x.shape[:2]
        mask = jnp.ones((n, k), jnp.float32) if instance_mask is None else instance_mask
        kwargs = dict(stem=self.stem, width=self.width, norm=self.norm, bn_axis_name=self.bn_axis_name,
                      dtype=self.dtype, remat=self.remat)
        if self.encoder == "resnet":
            kwargs.update(stage_sizes=tuple(self.stage_sizes), block=self.block)
        encoder = MODELS[self.encoder](num_classes=self.embed_dim, name="encoder", **kwargs)
        h = nn.relu(encoder(x.reshape((n * k, *x.shape[2:])), train=train)).reshape(n, k, self.embed_dim)
        attention = GatedAttention(self.attention_dim, self.gated, self.dtype, name="attention")(h, mask)
        classifier = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")
        z = jnp.einsum("nk,nke->ne", attention, h.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
        logits = classifier(z.astype(self.dtype)).astype(jnp.float32)
        return logits, attention, classifier(h).astype(jnp.float32)

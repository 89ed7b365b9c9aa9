"""The classifier: a ResNet18 trunk, a 256-d linear bottleneck (the latent space) and a linear head;
:func:`build_model` also builds the other architecture, :mod:`.convnet`'s, by ``train.arch``.

As the paper and the authors' released code: torchvision's resnet18 without pretrained weights
(here :mod:`.resnet`, the same trunk and initialisation written out),
Dropout on the last feature map, global average pooling, Linear(512, 256) with no activation and
Linear(256, 3). torchvision's stem is kept (7x7 stride-2 conv, stride-2 max pool), so a 100x100
image reaches layer4 as a 512 x 4 x 4 feature map (100 -> 50 -> 25 -> 25 -> 13 -> 7 -> 4).

The bottleneck output is returned beside the logits because the rest of the study lives there:
the MMD loss, latent distances, church windows and isomaps all read it.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .convnet import ConvNet
from .resnet import ResNet18Trunk

TRUNK_FEATURES = 512  # channels of resnet18's layer4


class GalaxyNet(nn.Module):
    """ResNet18 galaxy classifier with a linear latent bottleneck.

    Input: images (B, in_channels, H, W), normalised (see ``normalize.AsinhStretch``); the study
    uses 100 x 100. Output of ``forward``: ``(latent, logits)``, shaped (B, latent_dim) and
    (B, n_classes).
    """

    def __init__(self, n_classes: int = 3, latent_dim: int = 256, dropout: float = 0.5, in_channels: int = 3):
        super().__init__()
        for name, value in (("n_classes", n_classes), ("latent_dim", latent_dim), ("in_channels", in_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GalaxyNet: {name} must be a positive integer, got {value!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"GalaxyNet: dropout must be in [0, 1), got {dropout!r}")
        self.in_channels, self.latent_dim, self.n_classes = in_channels, latent_dim, n_classes

        trunk = ResNet18Trunk()
        if in_channels != 3:
            trunk.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            # The same initialisation torchvision gives the convolution it replaces.
            nn.init.kaiming_normal_(trunk.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.features = nn.Sequential(OrderedDict(
            (name, getattr(trunk, name))
            for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")))
        self.dropout = nn.Dropout(dropout)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.bottleneck = nn.Linear(TRUNK_FEATURES, latent_dim)
        self.head = nn.Linear(latent_dim, n_classes)
        # The authors' initialisation: small weights keep the fresh latent near the origin and the
        # initial logits near zero (uniform class probabilities).
        nn.init.normal_(self.bottleneck.weight, 0.0, 0.005)
        nn.init.zeros_(self.bottleneck.bias)
        nn.init.normal_(self.head.weight, 0.0, 0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(latent, logits)`` of images ``x`` (B, in_channels, H, W)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"GalaxyNet expects images shaped (B, {self.in_channels}, H, W), "
                             f"got shape {tuple(x.shape)}")
        h = self.pool(self.dropout(self.features(x))).flatten(1)
        latent = self.bottleneck(h)
        return latent, self.head(latent)

    def classify_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """Logits (B, n_classes) of latent points (B, latent_dim): the head alone.

        The head is linear, so the class regions of the latent space are convex polygons in any
        plane through it (the church-window plots).
        """
        if latent.ndim != 2 or latent.shape[1] != self.latent_dim:
            raise ValueError(f"GalaxyNet.classify_latent expects latents shaped (B, {self.latent_dim}), "
                             f"got shape {tuple(latent.shape)}")
        return self.head(latent)


ARCHS = ("resnet18", "convnet")


def build_model(seed: int, arch: str = "resnet18", *, image_size: int | None = None, **kwargs) -> nn.Module:
    """A classifier of architecture ``arch`` whose initial weights depend on ``seed`` alone:
    ``GalaxyNet(**kwargs)`` (resnet18, any image size) or ``ConvNet(image_size=..., **kwargs)``
    (convnet, whose bottleneck is sized for ``image_size`` px).

    The CPU generator is seeded inside a forked RNG state, so the global torch RNG (which drives
    dropout and data shuffling) is left as it was: seed that separately.
    """
    if arch not in ARCHS:
        raise ValueError(f"build_model: arch must be one of {ARCHS}, got {arch!r}")
    if arch == "convnet" and image_size is None:
        raise ValueError("build_model: the convnet needs image_size (its bottleneck reads the whole last map)")
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        if arch == "convnet":
            return ConvNet(image_size=image_size, **kwargs)
        return GalaxyNet(**kwargs)


def for_config(cfg, seed: int) -> nn.Module:
    """The untrained classifier ``cfg`` trains from ``seed``: ``train.arch``, ``train.dropout``, one input
    channel per band of ``generate.bands``, sized for ``generate.image_size``."""
    return build_model(seed, cfg.train.arch, dropout=cfg.train.dropout, in_channels=len(cfg.generate.bands),
                       image_size=cfg.generate.image_size)

"""The extended paper's small CNN ("ConvNet", DeepAdversaries, Ciprijanovic et al. 2022), in a page.

Three convolution blocks, each convolution -> batch norm -> ReLU -> 2 x 2 max pool: 5 x 5 to 8
channels, then 3 x 3 to 16, then 3 x 3 to 32, all stride 1 and "same" padding; the 32-channel map
is flattened into the same linear 256-d bottleneck and linear 3-class head as the ResNet18 model
(:class:`~hpcmorph.train.model.GalaxyNet`), so everything downstream (domain terms, church windows,
isomaps, latent distances) reads it alike. The layers and initialisation (torch's defaults for the
convolutions and batch norms; bottleneck N(0, 0.005), head N(0, 0.01), zero biases) are those of
the authors' released ``networks.ConvNet``. Two choices are the study's: the bottleneck's input is
32 x (H/8) x (W/8), floors at each pool (the authors hard-coded 32 x 12 x 12, their 100 x 100 px),
so the image size is part of the model; and ``train.dropout`` is applied to the last feature map as
in GalaxyNet (the authors' ConvNet has none: ``train.dropout=0`` is theirs exactly). About 6 k
weights in the convolutions and 1.2 M in the bottleneck at 100 px (0.5 M at 64), against ResNet18's 11 M.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

#: (kernel, output channels) of the three convolution blocks.
BLOCKS = ((5, 8), (3, 16), (3, 32))


class ConvNet(nn.Module):
    """Three-convolution galaxy classifier with a linear latent bottleneck.

    Input: images (B, in_channels, image_size, image_size), normalised. ``forward`` returns
    ``(latent, logits)``, shaped (B, latent_dim) and (B, n_classes), like GalaxyNet.
    """

    def __init__(self, n_classes: int = 3, latent_dim: int = 256, dropout: float = 0.5, in_channels: int = 3,
                 image_size: int = 100):
        super().__init__()
        for name, value in (("n_classes", n_classes), ("latent_dim", latent_dim), ("in_channels", in_channels),
                            ("image_size", image_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ConvNet: {name} must be a positive integer, got {value!r}")
        if image_size < 2 ** len(BLOCKS):
            raise ValueError(f"ConvNet: image_size must be at least {2 ** len(BLOCKS)} px (three 2x2 pools), "
                             f"got {image_size}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"ConvNet: dropout must be in [0, 1), got {dropout!r}")
        self.in_channels, self.latent_dim, self.n_classes = in_channels, latent_dim, n_classes
        self.image_size = image_size

        layers, channels, side = [], in_channels, image_size
        for i, (kernel, out) in enumerate(BLOCKS, start=1):
            layers += [(f"conv{i}", nn.Conv2d(channels, out, kernel_size=kernel, stride=1, padding=kernel // 2)),
                       (f"bn{i}", nn.BatchNorm2d(out)), (f"relu{i}", nn.ReLU(inplace=True)),
                       (f"pool{i}", nn.MaxPool2d(kernel_size=2, stride=2))]
            channels, side = out, side // 2
        self.features = nn.Sequential(OrderedDict(layers))
        self.dropout = nn.Dropout(dropout)
        self.bottleneck = nn.Linear(channels * side * side, latent_dim)
        self.head = nn.Linear(latent_dim, n_classes)
        nn.init.normal_(self.bottleneck.weight, 0.0, 0.005)
        nn.init.zeros_(self.bottleneck.bias)
        nn.init.normal_(self.head.weight, 0.0, 0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(latent, logits)`` of images ``x`` (B, in_channels, image_size, image_size)."""
        if x.ndim != 4 or x.shape[1:] != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(f"ConvNet expects images shaped (B, {self.in_channels}, {self.image_size}, "
                             f"{self.image_size}), got shape {tuple(x.shape)}")
        latent = self.bottleneck(self.dropout(self.features(x)).flatten(1))
        return latent, self.head(latent)

    def classify_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """Logits (B, n_classes) of latent points (B, latent_dim): the linear head alone."""
        if latent.ndim != 2 or latent.shape[1] != self.latent_dim:
            raise ValueError(f"ConvNet.classify_latent expects latents shaped (B, {self.latent_dim}), "
                             f"got shape {tuple(latent.shape)}")
        return self.head(latent)

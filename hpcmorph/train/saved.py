"""A trained model as later stages load it: ``<run.root>/<run.name>/<variant>/seed<s>/model.pt``.

The file holds the best weights, the fitted normalisation (:class:`AsinhStretch`), the model's
architecture (``arch``: resnet18 when absent) and shape (dropout, latent size, classes, the
convnet's image size) and the train digest of the config that made it, so a
model is never used with settings it was not trained with.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import Config
from ..errors import StageError
from ..layout import RunLayout
from .model import build_model
from .normalize import AsinhStretch
from .stage import digest


def model_path(cfg: Config, variant: str, seed: int) -> Path:
    return RunLayout.of(cfg).model(variant, seed)


def load_model(cfg: Config, variant: str, seed: int, device: torch.device) -> tuple[torch.nn.Module, AsinhStretch]:
    """(model in eval mode on ``device``, its normalisation) of the trained ``variant`` and ``seed``;
    a StageError naming the file when it is missing, unreadable or from other train settings."""
    path = model_path(cfg, variant, seed)
    if not path.exists():
        raise StageError(f"{path}: no such file; run `hpcmorph train` with this config first "
                         f"(model '{variant}', seed {seed})")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        state = saved["model"]
        in_channels = state["features.conv1.weight"].shape[1]
        # A model.pt without an arch holds a ResNet18 (of any image size).
        arch = saved.get("arch", "resnet18")
        size = int(saved["image_size"]) if arch == "convnet" else None
        model = build_model(0, arch, dropout=float(saved["dropout"]), latent_dim=int(saved["latent_dim"]),
                            n_classes=len(saved["class_names"]), in_channels=in_channels, image_size=size)
        model.load_state_dict(state)
        stretch = AsinhStretch.from_dict(saved["normalization"])
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is the same user error
        raise StageError(f"{path}: not a usable trained model ({type(err).__name__}: {err})") from None
    if saved.get("digest") != digest(cfg):
        raise StageError(f"{path} was trained with different settings (train digest {saved.get('digest')}, this "
                         f"config {digest(cfg)}); run `hpcmorph train` with this config first")
    return model.to(device).eval(), stretch

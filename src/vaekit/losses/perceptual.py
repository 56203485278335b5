"""LPIPS (Zhang et al. 2018) through the ``lpips`` package, with an honest offline failure.

The ``lpips`` package ships its calibrated linear layers; the VGG16 backbone's ImageNet weights come
from torchvision's download (``vgg16-397923af.pth``) into ``$TORCH_HOME/hub/checkpoints``. Without
internet, that file has to be put there by hand; until then the loss or metric that needs it says so.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vaekit.errors import VaekitError

VGG_FILE = "vgg16-397923af.pth"
VGG_URL = f"https://download.pytorch.org/models/{VGG_FILE}"


class WeightsUnavailable(VaekitError):
    """Pretrained weights that a loss or metric needs are not on this machine."""


def hub_checkpoint(name: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def make_lpips(pretrained_backbone: bool = True) -> nn.Module:
    """LPIPS-VGG, frozen, in eval mode; inputs ``(B, 3, H, W)`` in [-1, 1], output ``(B, 1, 1, 1)``.

    ``pretrained_backbone=False`` uses a random VGG (for tests; not a perceptual metric).
    """
    try:
        import lpips
    except ImportError as err:
        raise VaekitError(f"LPIPS needs the lpips package ({err}): pip install lpips") from None
    if pretrained_backbone and not hub_checkpoint(VGG_FILE).is_file():
        raise WeightsUnavailable(
            f"LPIPS needs the VGG16 ImageNet weights {VGG_FILE}, which are not in {hub_checkpoint(VGG_FILE).parent} "
            f"and cannot be downloaded here: fetch {VGG_URL} on a machine with internet and copy it there "
            "(or set TORCH_HOME to a folder whose hub/checkpoints/ holds it)"
        )
    model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=not pretrained_backbone, verbose=False)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model

"""LPIPS (Zhang et al. 2018) through the ``lpips`` package, and the pretrained weights that losses and
metrics download, with an honest offline failure.

The ``lpips`` package ships its calibrated linear layers; the VGG16 backbone's ImageNet weights
(``vgg16-397923af.pth``) are downloaded, as torchvision does, into ``$TORCH_HOME/hub/checkpoints`` the
first time they are needed. Only when that download fails (no network, a proxy, a firewall) does the
loss or metric say which file is missing, where it goes and where it comes from.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from vaekit.errors import VaekitError

VGG_FILE = "vgg16-397923af.pth"
VGG_URL = f"https://download.pytorch.org/models/{VGG_FILE}"
LPIPS_MIN_SIDE = 16
"""The smallest image side LPIPS-VGG takes: its relu5_3 comes after four 2×2 max-pools, and a side below 16
leaves the fourth nothing to pool ("Output size is too small")."""


class WeightsUnavailable(VaekitError):
    """Pretrained weights that a loss or metric needs are not on this machine."""


log = logging.getLogger("vaekit")


def hub_checkpoint(name: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def fetch_weights(name: str, url: str, needed_by: str) -> Path:
    """``$TORCH_HOME/hub/checkpoints/name``, downloaded from ``url`` first when it is not there (torch.hub's
    own download: a temporary file, then a rename); ``WeightsUnavailable`` naming the file, the folder and
    the address when the download fails."""
    path = hub_checkpoint(name)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s for %s from %s", name, needed_by, url)
    try:
        torch.hub.download_url_to_file(url, str(path), progress=False)
    except (OSError, ValueError, RuntimeError) as err:  # URLError and HTTPError are OSErrors
        reason = str(getattr(err, "reason", None) or err).strip().splitlines()[0][:200]
        raise WeightsUnavailable(
            f"{needed_by} needs the weights {name}, which are not in {path.parent} and could not be downloaded "
            f"from {url} ({reason}): fetch that file on a machine with internet and copy it into {path.parent} "
            "(or set TORCH_HOME to a folder whose hub/checkpoints/ holds it)") from None
    return path


def make_lpips(pretrained_backbone: bool = True) -> nn.Module:
    """LPIPS-VGG, frozen, in eval mode; inputs ``(B, 3, H, W)`` in [-1, 1], output ``(B, 1, 1, 1)``.

    ``pretrained_backbone=False`` uses a random VGG (for tests; not a perceptual metric).
    """
    try:
        import lpips
    except ImportError as err:
        raise VaekitError(f"LPIPS needs the lpips package ({err}): pip install lpips") from None
    if pretrained_backbone:
        fetch_weights(VGG_FILE, VGG_URL, "LPIPS (its VGG16 ImageNet backbone)")
    model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=not pretrained_backbone, verbose=False)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model

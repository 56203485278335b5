"""Alignment of the latent space to a frozen vision model: VA-VAE's vision-foundation (VF) loss (Yao et al.
2025, hustvl/LightningDiT, ``vavae/ldm/modules/losses/contperceptual.py`` and ``vavae/ldm/models``).

The sampled latent z (B, c, h, w) is projected by a learned 1×1 convolution (no bias) to the backbone's
feature width (VA-VAE's ``reverse_proj``, their default), giving z'. The backbone's patch features f of the
same image, resized to h × w when the grids differ, are the target. With cosine similarities taken at each
latent position over channels:

    L_mcos    = mean over images and positions of  relu(1 − m₁ − cos(z'ᵢ, fᵢ))              (m₁ = 0.5)
    L_mdms    = mean over images and position pairs of  relu(|cos(z'ᵢ, z'ⱼ) − cos(fᵢ, fⱼ)| − m₂)   (m₂ = 0.25)
    L_vf      = L_mdms + L_mcos
    weight    = vf_weight · ‖∇_w L_rec‖ / (‖∇_w L_vf‖ + 1e-4), clamped to [0, 1e8], w = the encoder's last
                convolution (VA-VAE's adaptive VF weight; vf_weight = 0.1 in f16d32_vfdinov2.yaml)

The published recipe aligns to DINOv2 ViT-L/14 (``timm:vit_large_patch14_dinov2.lvd142m``) at 224². Any timm
model (``timm:NAME``) or transformers model (a hub name or a saved folder) whose output is a token sequence
or a feature map serves. Images are given to it in its own normalisation (VA-VAE passes [-1, 1] images as
they are). The backbone is frozen and stays out of the module tree (so out of every checkpoint); the
projection is trained with the autoencoder and saved with the loss's state.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vaekit.errors import ConfigError, VaekitError
from vaekit.losses.perceptual import WeightsUnavailable

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class FrozenBackbone(nn.Module):
    """A frozen vision model as a map from images in [-1, 1] to patch features (B, C, h, w)."""

    def __init__(self, model: nn.Module, mean, std, image_size: int, prefix_tokens: int | None, library: str):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.image_size = image_size
        self.prefix_tokens = prefix_tokens
        self.library = library
        with torch.no_grad():
            self.width = self(torch.zeros(1, 3, image_size, image_size)).shape[1]

    def _output(self, x: torch.Tensor) -> torch.Tensor:
        if self.library == "timm":
            return self.model.forward_features(x)
        return self.model(pixel_values=x).last_hidden_state

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        x = ((x + 1) / 2 - self.mean.to(x)) / self.std.to(x)
        with torch.no_grad():
            out = self._output(x)
        if out.dim() == 4:
            return out.float()
        side = math.isqrt(out.shape[1] - (self.prefix_tokens or 0))
        patches = out[:, out.shape[1] - side * side:]  # prefix tokens (class, registers) come first
        return patches.transpose(1, 2).reshape(out.shape[0], -1, side, side).float()


def _timm_backbone(name: str, pretrained: bool, image_size: int) -> FrozenBackbone:
    import timm

    extra = {"dynamic_img_size": True} if "vit" in name or "deit" in name else {}
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0, img_size=image_size, **extra)
    except TypeError:  # not a transformer: no img_size argument
        model = timm.create_model(name, pretrained=pretrained, num_classes=0)
    config = model.pretrained_cfg
    return FrozenBackbone(model, config.get("mean", IMAGENET_MEAN), config.get("std", IMAGENET_STD), image_size,
                          getattr(model, "num_prefix_tokens", 0), "timm")


def _transformers_backbone(name: str, image_size: int) -> FrozenBackbone:
    from transformers import AutoImageProcessor, AutoModel

    model = AutoModel.from_pretrained(name)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    try:
        processor = AutoImageProcessor.from_pretrained(name)
        mean, std = processor.image_mean, processor.image_std
    except (OSError, ValueError):
        pass  # no preprocessor_config.json: ImageNet statistics, which vision backbones share
    registers = getattr(model.config, "num_register_tokens", 0) or 0
    prefix = 1 + registers if hasattr(model.config, "patch_size") else None
    return FrozenBackbone(model, mean, std, image_size, prefix, "transformers")


def load_backbone(name: str, pretrained: bool = True, image_size: int = 224) -> FrozenBackbone:
    """``timm:NAME`` (a timm model, its pretrained weights downloaded unless ``pretrained`` is false) or a
    transformers model (a hub name or a folder written by ``save_pretrained``)."""
    try:
        if name.startswith("timm:"):
            return _timm_backbone(name[len("timm:"):], pretrained, image_size)
        return _transformers_backbone(name, image_size)
    except ImportError as err:
        raise VaekitError(f"loss.vf_model {name!r} needs the {err.name} package: pip install {err.name}") from None
    except (OSError, RuntimeError, ValueError) as err:
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        if Path(name).expanduser().exists():
            raise ConfigError(f"loss.vf_model {name!r} is not a model folder ({reason}): give a folder a transformers "
                              "model was written to with save_pretrained, or timm:NAME") from None
        raise WeightsUnavailable(
            f"loss.vf_model could not load {name!r} ({reason}). Its weights are downloaded into the Hugging Face "
            "cache (HF_HOME) on first use: without internet, load it once on a machine that has it and copy the "
            "cache over, or give the folder a transformers model was written to with save_pretrained") from None


def vf_loss(projected: torch.Tensor, features: torch.Tensor, cos_margin: float,
            distmat_margin: float) -> tuple[torch.Tensor, dict[str, float]]:
    """L_mdms + L_mcos of the module docstring for ``projected`` z' and ``features`` f, both (B, C, h, w)."""
    z = F.normalize(projected.flatten(2), dim=1)
    f = F.normalize(features.flatten(2), dim=1)
    z_similarity = z.transpose(1, 2) @ z  # (B, hw, hw)
    f_similarity = f.transpose(1, 2) @ f
    distance_matrix = F.relu((z_similarity - f_similarity).abs() - distmat_margin).mean()
    cosine = F.relu(1 - cos_margin - (z * f).sum(dim=1)).mean()
    return distance_matrix + cosine, {"vf_mdms": distance_matrix.item(), "vf_mcos": cosine.item()}


class VisionAlignment(nn.Module):
    """The projection z → z' (trained) and the frozen backbone (not a submodule)."""

    def __init__(self, backbone: FrozenBackbone, latent_channels: int, cos_margin: float, distmat_margin: float):
        super().__init__()
        self.projection = nn.Conv2d(latent_channels, backbone.width, 1, bias=False)
        self._backbone = [backbone]
        self.cos_margin, self.distmat_margin = cos_margin, distmat_margin

    def forward(self, z: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        backbone = self._backbone[0].to(images.device)
        features = backbone(images)
        if features.shape[-2:] != z.shape[-2:]:
            features = F.interpolate(features, size=z.shape[-2:], mode="bilinear", align_corners=False)
        return vf_loss(self.projection(z).float(), features, self.cos_margin, self.distmat_margin)


def check_alignment_settings(vf_model: str | None, decoder_only: bool) -> None:
    if vf_model is not None and decoder_only:
        raise ConfigError("loss.vf_model aligns the encoder's latents to a vision model, and train.decoder_only "
                          "freezes the encoder: train the whole autoencoder (VA-VAE does) or drop loss.vf_model")

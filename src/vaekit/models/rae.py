"""Representation autoencoder (RAE; Zheng, Ma, Tong & Xie 2025, code bytetriper/RAE): the patch tokens of a
frozen pretrained vision encoder (DINOv2 with registers, SigLIP/SigLIP2, MAE) are the latent, and a ViT
decoder, the only part that trains, maps them back to pixels.

The network is diffusers' ``AutoencoderRAE``, held unchanged in ``self.module`` and built from the encoder
named by ``model.encoder`` (a ``transformers`` hub name or folder) with that encoder's weights copied in;
vaekit adds the training around it: the encoder frozen (no gradients, eval mode, no optimizer state) and
the latent noise of RAE's decoder training. A trained model is saved as the ``AutoencoderRAE`` folder itself
(``save_pretrained``), which diffusers loads unchanged and ``vaekit.load_model`` wraps. The recipe, traced to
its sources with every difference, is in docs/rae.md.

Images are ``(B, 3, S, S)`` in [-1, 1] with S the decoder's output side (``patch_size`` · the encoder's token
grid); latents are the encoder's tokens ``(B, hidden_size, grid, grid)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from vaekit.errors import ConfigError
from vaekit.io.atomic import write_folder
from vaekit.models.base import Autoencoder
from vaekit.models.diffusers_autoencoders import rae_statistics, set_rae_statistics
from vaekit.models.distributions import DiagonalGaussian, batch_noise
from vaekit.models.latent_scale import LatentNorm
from vaekit.registry import MODELS

FAMILIES = {"dinov2_with_registers": "dinov2", "siglip": "siglip2", "siglip_vision_model": "siglip2",
            "vit_mae": "mae"}
"""transformers' ``model_type`` of each encoder RAE takes → diffusers' ``encoder_type``."""
TOWERS = {"dinov2": "Dinov2WithRegistersModel", "siglip2": "SiglipVisionModel", "mae": "ViTMAEModel"}
"""The transformers class each family's weights load into (the class diffusers builds for it)."""
FINAL_NORM = {"dinov2": "layernorm.", "siglip2": "vision_model.post_layernorm.", "mae": "layernorm."}
"""The encoder's last layer norm, whose affine weights RAE drops (tokens are normalised, not rescaled)."""
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
IMAGE_STATISTICS = {"dinov2": IMAGENET, "mae": IMAGENET, "siglip2": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}
"""Each family's input normalisation when the encoder's folder has no ``preprocessor_config.json``."""
STRUCTURE = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "mlp_ratio",
             "hidden_act", "layer_norm_eps", "image_size", "patch_size", "num_channels", "qkv_bias",
             "layerscale_value", "use_swiglu_ffn", "num_register_tokens", "vision_use_head")
"""Config fields that change an encoder's computation: diffusers rebuilds the encoder from four numbers, so
each of these must be what that rebuild gives, or a saved model would not load back as it trained."""


@dataclass
class RAEConfig:
    """An RAE: the frozen encoder, and the ViT decoder trained on its tokens (defaults: the paper's main
    setting, DINOv2-B with registers at 224² and the ViT-XL decoder with patch 16, giving 256² images)."""

    encoder: str = "facebook/dinov2-with-registers-base"
    """The frozen encoder: a transformers hub name or folder of DINOv2 with registers, SigLIP/SigLIP2 (fixed
    resolution) or MAE; its preprocessor_config.json gives the input normalisation when it has one."""
    encoder_input_size: int = 224
    """Side the images are resized to (bicubic) before the encoder; a multiple of its patch size."""
    patch_size: int = 16
    """The decoder's patch: each token becomes a patch_size² block, so the output side is patch_size · the
    token grid (256 for 16×16 tokens)."""
    decoder_hidden_size: int = 1152
    """Width of the ViT decoder (RAE's ViT-B 768, ViT-L 1024, ViT-XL 1152)."""
    decoder_num_hidden_layers: int = 28
    """Depth of the decoder (ViT-B 12, ViT-L 24, ViT-XL 28)."""
    decoder_num_attention_heads: int = 16
    """Attention heads of the decoder (ViT-B 12, ViT-L and ViT-XL 16)."""
    decoder_intermediate_size: int = 4096
    """MLP width of the decoder (ViT-B 3072, ViT-L and ViT-XL 4096)."""
    noise_tau: float = 0.8
    """While training, each image's latent gets σ·ε with σ ~ U(0, noise_tau) and ε ~ N(0, I), so the decoder
    learns to decode the imperfect latents a diffusion model samples (RAE: 0.8; 0: off). Never at inference."""

    def __post_init__(self) -> None:
        sizes = {name: getattr(self, name) for name in ("encoder_input_size", "patch_size", "decoder_hidden_size",
                                                        "decoder_num_hidden_layers", "decoder_num_attention_heads",
                                                        "decoder_intermediate_size")}
        small = [name for name, value in sizes.items() if value < 1]
        if small:
            raise ValueError(f"{small[0]} must be at least 1, got {sizes[small[0]]}")
        if self.decoder_hidden_size % self.decoder_num_attention_heads:
            raise ValueError(f"decoder_hidden_size ({self.decoder_hidden_size}) must be divisible by "
                             f"decoder_num_attention_heads ({self.decoder_num_attention_heads})")
        if self.noise_tau < 0:
            raise ValueError(f"noise_tau must be at least 0, got {self.noise_tau}")

    @property
    def in_channels(self) -> int:
        """RGB: every encoder RAE takes reads three channels."""
        return 3

    @property
    def out_channels(self) -> int:
        return 3


class RAEOutput(NamedTuple):
    posterior: DiagonalGaussian
    """A point mass at the encoder's tokens (the encoder is deterministic and frozen)."""
    z: torch.Tensor
    """What the decoder got: the tokens, plus the training noise while training."""
    reconstruction: torch.Tensor


def encoder_config(name: str):
    """(diffusers' encoder_type, the transformers config of the vision tower) of the encoder ``name``, or a
    ConfigError that says what RAE takes."""
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ConfigError(f"model.encoder {name!r} is not a transformers model folder or hub name that loads here "
                          f"({reason}); give the folder of DINOv2 with registers, SigLIP or MAE, or its hub name "
                          "(facebook/dinov2-with-registers-base) on a machine that can download it") from None
    family = FAMILIES.get(config.model_type)
    if family is None:
        raise ConfigError(f"model.encoder {name!r} is a {config.model_type} model; RAE's encoders are "
                          f"{', '.join(sorted(FAMILIES))} (DINOv2 with registers, SigLIP/SigLIP2, MAE)")
    return family, getattr(config, "vision_config", None) if config.model_type == "siglip" else config


def image_statistics(name: str, family: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The encoder's input mean and std (its ``preprocessor_config.json``, else its family's)."""
    from transformers.utils import cached_file

    path = Path(name) / "preprocessor_config.json"
    if not path.is_file():
        found = cached_file(name, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
        path = Path(found) if found else None
    if path is None:
        return IMAGE_STATISTICS[family]
    processor = json.loads(path.read_text())
    default_mean, default_std = IMAGE_STATISTICS[family]
    return tuple(processor.get("image_mean", default_mean)), tuple(processor.get("image_std", default_std))


def _check_structure(name: str, given, rebuilt) -> None:
    for key in STRUCTURE:
        if not (hasattr(given, key) and hasattr(rebuilt, key)):
            continue
        ours, theirs = getattr(given, key), getattr(rebuilt, key)
        if ours != theirs:
            raise ConfigError(
                f"model.encoder {name!r} has {key}={ours!r}, and diffusers' AutoencoderRAE rebuilds its encoder "
                f"with {key}={theirs!r} (from the hidden size, patch size and depth, 64-wide heads and transformers' "
                "defaults otherwise): a model trained on it would not load back. RAE's published encoders "
                "(DINOv2-B with registers, SigLIP2-B, MAE-B) fit")


def build_module(config: RAEConfig):
    """diffusers' AutoencoderRAE for ``config``, its encoder holding the weights of ``config.encoder``."""
    import transformers
    from diffusers import AutoencoderRAE

    family, tower_config = encoder_config(config.encoder)
    mean, std = image_statistics(config.encoder, family)
    try:
        module = AutoencoderRAE(
            encoder_type=family, encoder_hidden_size=tower_config.hidden_size,
            encoder_patch_size=tower_config.patch_size, encoder_num_hidden_layers=tower_config.num_hidden_layers,
            decoder_hidden_size=config.decoder_hidden_size, decoder_num_hidden_layers=config.decoder_num_hidden_layers,
            decoder_num_attention_heads=config.decoder_num_attention_heads,
            decoder_intermediate_size=config.decoder_intermediate_size, patch_size=config.patch_size,
            encoder_input_size=config.encoder_input_size, encoder_norm_mean=list(mean), encoder_norm_std=list(std))
    except ValueError as err:
        raise ConfigError(f"model: {err}") from None
    rebuilt = module.encoder.config
    _check_structure(config.encoder, tower_config, getattr(rebuilt, "vision_config", rebuilt))
    tower = getattr(transformers, TOWERS[family]).from_pretrained(config.encoder)
    drop = FINAL_NORM[family]
    state = {key: value for key, value in tower.state_dict().items()
             if key not in (drop + "weight", drop + "bias")}
    try:
        module.encoder.load_state_dict(state)
    except RuntimeError as err:
        raise ConfigError(f"model.encoder {config.encoder!r}: its weights do not fit the encoder diffusers' "
                          f"AutoencoderRAE builds for it ({str(err).splitlines()[0][:300]})") from None
    return module


@MODELS.register("rae", RAEConfig)
class RepresentationAutoencoder(Autoencoder):
    """A frozen representation encoder and the ViT decoder trained on its tokens; diffusers' AutoencoderRAE
    inside (``self.module``). Images in [-1, 1]."""

    value_range = (-1.0, 1.0)
    loss_name = "rae-lpips-gan"
    adam_betas = (0.9, 0.95)  # RAE's AdamW (configs/stage1/training/DINOv2-B_decXL.yaml)
    latent_layout = "spatial"
    has_likelihood = False
    deterministic = True
    frozen_encoder = True
    channel_statistics = True

    def __init__(self, config: RAEConfig):
        super().__init__()
        self.config = config
        self.module = build_module(config)
        self.module.encoder.requires_grad_(False)
        self.module.encoder.eval()

    def train(self, mode: bool = True) -> "RepresentationAutoencoder":
        """The decoder's mode; the encoder stays in eval mode (frozen, as RAE trains it)."""
        super().train(mode)
        self.module.encoder.eval()
        return self

    def encoder_modules(self):
        return [self.module.encoder]

    def last_decoder_weight(self) -> torch.Tensor:
        """The decoder's output projection, where RAE's adaptive GAN weight compares gradients."""
        return self.module.decoder.decoder_pred.weight

    @classmethod
    def config_for_data(cls, params, image_shape, num_classes, data_name):
        _, tower = encoder_config(params.encoder)
        side = params.patch_size * (params.encoder_input_size // tower.patch_size)
        if tuple(image_shape) != (3, side, side):
            raise ConfigError(
                f"model {cls.registry_name} decodes {side}×{side} RGB images (patch_size {params.patch_size} × "
                f"{params.encoder_input_size // tower.patch_size} tokens a side) and {data_name} has "
                f"{'×'.join(map(str, image_shape))}: give the data that size (a folder's data.crop_size or "
                "data.image_size), or change model.patch_size or model.encoder_input_size")
        return {}

    @property
    def downsampling_factor(self) -> int:
        """Pixels of the decoded image per latent position."""
        return self.config.patch_size

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """The encoder resizes every image to its input size: the token grid is fixed."""
        grid = int(self.module.num_patches ** 0.5)
        return self.latent_channels, grid, grid

    @property
    def latent_channels(self) -> int:
        """Channels of the latents: the encoder's hidden size (one token per position)."""
        return self.module.config.encoder_hidden_size

    @property
    def latent_norm(self) -> LatentNorm:
        """The identity: the per-channel statistics are applied inside ``encode`` (diffusers' latents_mean/
        latents_std) and undone inside ``decode``, so what ``encode`` gives is already what a diffusion model
        takes (``export-latents`` of a checkpoint or a saved model records and undoes nothing more)."""
        return LatentNorm()

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> DiagonalGaussian:
        """x: ``(B, 3, H, W)`` in [-1, 1] → a point mass at the tokens ``(B, hidden_size, grid, grid)``."""
        with torch.no_grad():  # frozen: no graph through the encoder, whatever the caller's mode
            z = self.module.encode((x + 1) / 2).latent  # AutoencoderRAE takes [0, 1] images
        return DiagonalGaussian(z, torch.zeros_like(z), deterministic=True)

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None,
               size: tuple[int, int] | None = None) -> torch.Tensor:
        """Tokens ``(B, hidden_size, grid, grid)`` → images ``(B, 3, S, S)`` in [-1, 1] (not clipped), resized
        (bicubic) to ``size`` when another is asked for."""
        images = self.module.decode(z.contiguous()).sample * 2 - 1
        if size is None or tuple(images.shape[-2:]) == tuple(size):
            return images
        return F.interpolate(images, size=tuple(size), mode="bicubic", align_corners=False, antialias=True)

    def latent_noise(self, z: torch.Tensor, generator=None) -> torch.Tensor:
        """RAE's training noise: σ·ε per image, σ = noise_tau · u with u ~ U(0, 1) (the normal CDF of a
        standard normal draw, so the trainer's per-global-batch source gives it), ε ~ N(0, I)."""
        shape = (z.shape[0],) + (1,) * (z.ndim - 1)
        sigma = self.config.noise_tau * torch.special.ndtr(batch_noise(generator, shape, z.device, z.dtype))
        return sigma * batch_noise(generator, z.shape, z.device, z.dtype)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, sample: bool = True,
                generator=None) -> RAEOutput:
        """Encode, add the training noise (in training mode, when ``sample``), decode to ``x``'s size."""
        posterior = self.encode(x)
        z = posterior.mode()
        if self.training and sample and self.config.noise_tau > 0:
            z = z + self.latent_noise(z, generator)
        return RAEOutput(posterior, z, self.decode(z, size=x.shape[2:]))

    def reconstruct(self, x: torch.Tensor, sample: bool = False) -> torch.Tensor:
        return self.decode(self.encode(x).mode(), size=x.shape[2:])

    def store_channel_statistics(self, channel_mean: torch.Tensor, channel_std: torch.Tensor) -> None:
        """Make ``encode`` give latents of mean 0 and std 1 per channel where ``channel_mean``/``channel_std``
        ``(C,)`` were measured on what it gives now: diffusers' latents_mean/latents_std (config and buffers),
        applied inside encode and undone inside decode, as RAE's stage-2 statistics are (reconstructions do not
        change). RAE measures them per element (``src/calculate_stat.py``); vaekit per channel."""
        set_rae_statistics(self.module, *rae_statistics(self.module, channel_mean, channel_std))

    def copy_statistics_to(self, folder: str | Path) -> None:
        """Write this model's latent statistics into the AutoencoderRAE folder of a model with the same frozen
        encoder (the run's best/ weights), whose tokens they describe as well: that model is loaded, given the
        statistics, and saved whole into a temporary sibling renamed over the folder (its other files, best.json,
        kept), so a kill leaves the old folder or the new one, never its config without its weights."""
        from diffusers import AutoencoderRAE

        other = AutoencoderRAE.from_pretrained(str(folder), torch_dtype=torch.float32)
        set_rae_statistics(other, self.module._latents_mean.double(), self.module._latents_std.double())
        write_folder(folder, lambda tmp: other.save_pretrained(tmp, safe_serialization=True), keep_others=True)

    def save_pretrained(self, path: str | Path) -> Path:
        """The ``AutoencoderRAE`` folder (config.json + diffusion_pytorch_model.safetensors) that diffusers'
        ``from_pretrained`` loads unchanged. Its config keeps noise_tau = 0, as RAE's inference configs do."""
        path = Path(path)
        self.module.save_pretrained(path, safe_serialization=True)
        return path

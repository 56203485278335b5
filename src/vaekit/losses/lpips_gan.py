"""The image autoencoder's loss of LDM / taming: pixel + LPIPS + KL + PatchGAN with adaptive weight.

Generator (autoencoder) side, per batch:

    rec      = |x − x̂| (or (x − x̂)²) + perceptual_weight · LPIPS(x, x̂)        per pixel
    KL model (LDM's LPIPSWithDiscriminator):
      nll    = Σ (rec / exp(s) + s) / B          s: a learned scalar log-variance (or fixed 0);
                                                 reduction=mean: the mean over pixels instead of Σ/B
      loss   = nll + kl_weight · Σ KL / B + λ · [step ≥ disc_start] · (−E[D(x̂)])
    VQ model (taming's VQLPIPSWithDiscriminator):
      nll    = mean(rec)                          a mean over every element, no log-variance
      loss   = nll + codebook_weight · (codebook + β · commitment) + λ · [step ≥ disc_start] · (−E[D(x̂)])
    λ        = disc_weight · clamp(‖∇_w nll‖ / (‖∇_w g‖ + 1e-4), 0, 1e4),  w = the decoder's last layer

The two reductions differ as their sources do: LDM sums the reconstruction over pixels (so the KL weight
is relative to a per-image sum), taming averages it (so the quantiser's terms, themselves means, weigh
against a per-pixel mean).

Discriminator side (its own optimizer, after the generator's step): hinge or vanilla loss on x and the
*detached* x̂, from ``disc_start`` on. The discriminator's parameters take no gradient from the
generator step (they are frozen while it runs), and the discriminator step sees no autoencoder graph.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Literal

import torch
from torch import nn

from vaekit.errors import ConfigError
from vaekit.losses.alignment import VisionAlignment, load_backbone
from vaekit.losses.discriminator import D_LOSSES, NLayerDiscriminator
from vaekit.losses.latent_transforms import (BatchRegularisers, LatentDenoising, draw_downsampling, draw_eqvae,
                                             draw_mask)
from vaekit.losses.perceptual import LPIPS_MIN_SIDE
from vaekit.registry import LOSSES


@dataclass
class LPIPSGANConfig:
    pixel: Literal["l1", "l2"] = "l1"
    """The pixel reconstruction term: l1 (LDM's) or l2 (sd-vae-ft-mse's)."""
    perceptual_weight: float = 1.0
    """0 turns LPIPS off (it needs VGG16 weights, see docs)."""
    lpips_pretrained: bool = True
    """False: LPIPS on a random VGG (tests only)."""
    kl_weight: float = 1e-6
    """The KL term's weight (KL autoencoders)."""
    reduction: Literal["sum", "mean"] = "sum"
    """KL autoencoders' reconstruction term per image: sum over pixels (LDM's, so kl_weight weighs the KL
    against a per-image sum, C·H·W times less than with mean) or mean over pixels (what a plain loop with
    F.l1_loss writes). The KL is summed over the latent either way."""
    codebook_weight: float = 1.0
    """The quantiser loss's weight (VQ autoencoders; taming's VQLPIPSWithDiscriminator: 1.0)."""
    learn_logvar: bool = False
    """Learn the scalar log-variance s of nll = rec / exp(s) + s (LDM's logvar), else s = 0."""
    disc_weight: float = 0.5
    """The adversarial term's weight, before the adaptive weight; 0 removes the discriminator."""
    disc_start: int = 50001
    """Optimizer step from which the adversarial term and the discriminator run (LDM's kl-f8: 50001)."""
    disc_loss: Literal["hinge", "vanilla"] = "hinge"
    """The discriminator's loss: hinge (LDM's) or vanilla (non-saturating cross-entropy)."""
    disc_layers: int = 3
    """Strided convolution layers of the PatchGAN discriminator (LDM: 3)."""
    disc_channels: int = 64
    """Channels of the PatchGAN discriminator's first layer (doubled per layer)."""
    disc_lr: float | None = None
    """Discriminator learning rate (default: train.lr)."""
    eqvae_prob: float = 0.0
    """EQ-VAE: the share of batches whose sampled latent and image are both scaled by a random s in [0.25, 1)
    and rotated by a random multiple of 90°, the decoder reconstructing τ(x) from τ(z) instead of x from z
    (zelaki/eqvae: 0.5; KL autoencoders; losses/latent_transforms.py)."""
    scale_equivariance_weight: float = 0.0
    """Scale equivariance (Skorokhodov et al. 2025): on every batch, the weight of an added reconstruction
    term of the image down-sampled ×2 or ×4 (bilinear) from the latent down-sampled alike (0: off)."""
    latent_noise_gamma: float = 0.0
    """Latent denoising (l-DeTok): the decoder reconstructs x from (1 − t)·z + t·γ·ε, t ~ U(0, 1) per image;
    this is γ (DeTok: 3.0; 0: off). Applies to the batches EQ-VAE did not take."""
    latent_mask_ratio: float = 0.0
    """Latent denoising (l-DeTok): the largest share of latent positions masked, one ratio max(0, U(−0.1,
    this)) per batch: their image patches are hidden from the encoder and the decoder gets a learned token
    there (DeTok: 0.7; 0: off). Applies to the batches EQ-VAE did not take."""
    vf_model: str | None = None
    """VA-VAE's alignment of the latents to a frozen vision model: timm:NAME or a transformers hub name or
    folder (VA-VAE: DINOv2 ViT-L/14, timm:vit_large_patch14_dinov2.lvd142m); None: off. losses/alignment.py."""
    vf_weight: float = 0.1
    """The alignment term's weight (VA-VAE: 0.1), times the adaptive weight when vf_adaptive."""
    vf_adaptive: bool = True
    """Scale the alignment term by ‖∇ rec‖ / ‖∇ vf‖ at the encoder's last layer (VA-VAE's adaptive_vf)."""
    vf_cos_margin: float = 0.5
    """Margin of the per-position cosine term (VA-VAE: 0.5)."""
    vf_distmat_margin: float = 0.25
    """Margin of the similarity-matrix term (VA-VAE: 0.25)."""
    vf_image_size: int = 224
    """Side the images are resized to for the vision model (VA-VAE's DINOv2: 224)."""
    vf_pretrained: bool = True
    """False: a timm backbone with random weights (tests only)."""


def adaptive_weight(nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    disc_weight: float, gradient_mean=None, limit: float = 1e4) -> torch.Tensor:
    """disc_weight · ‖∇nll‖ / (‖∇g‖ + 1e-4), clamped to [0, limit], gradients at ``last_layer`` (detached).

    ``gradient_mean``: the training loop's average over processes (``training.distributed.mean_tensors``),
    applied to both gradients first, so the weight is the one of the global batch, as with one process."""
    nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    if gradient_mean is not None:
        nll_grad, g_grad = gradient_mean(nll_grad, g_grad)
    weight = torch.norm(nll_grad) / (torch.norm(g_grad) + 1e-4)
    return torch.clamp(weight, 0.0, limit).detach() * disc_weight


def target_of(output, x: torch.Tensor) -> torch.Tensor:
    """What the reconstruction is compared with: the transformed image when the forward pass applied a
    latent transform, else ``x``."""
    target = getattr(output, "target", None)
    return x if target is None else target


def _latent_options(config: LPIPSGANConfig) -> tuple[float, ...]:
    return (config.eqvae_prob, config.scale_equivariance_weight, config.latent_noise_gamma, config.latent_mask_ratio)


@LOSSES.register("lpips-gan", LPIPSGANConfig)
class LPIPSWithDiscriminator(nn.Module):
    """LDM's autoencoder loss: L1/L2 + LPIPS + KL (taming's quantiser terms for VQ) + a PatchGAN with the
    adaptive weight and a delayed start."""
    has_discriminator = True

    def __init__(self, config: LPIPSGANConfig, in_channels: int = 3):
        super().__init__()
        self.config = config
        self.beta = config.kl_weight  # the trainer's KL warm-up scales this, like a VAE's β
        # LPIPS stays out of the module tree: it is frozen, comes from its own files, and must not be
        # copied into every checkpoint (the VGG is 58 MB).
        self._perceptual: list[nn.Module] = []
        if config.perceptual_weight > 0:
            from vaekit.losses.perceptual import make_lpips

            self._perceptual.append(make_lpips(config.lpips_pretrained))
        self.logvar = nn.Parameter(torch.zeros(()), requires_grad=config.learn_logvar)
        self.discriminator = (NLayerDiscriminator(in_channels, config.disc_channels, config.disc_layers)
                              if config.disc_weight > 0 else None)
        self.d_loss = D_LOSSES[config.disc_loss]
        self.regularizer = "kl"
        self.alignment: VisionAlignment | None = None
        self._encoder_layer: list[torch.Tensor] = []  # the encoder's last weight, for the adaptive VF weight
        self.mask_token: nn.Parameter | None = None  # latent denoising's, sized by for_model

    @classmethod
    def for_model(cls, config: LPIPSGANConfig, model: nn.Module) -> "LPIPSWithDiscriminator":
        if model.regularizer == "vq" and any(_latent_options(config)):
            raise ConfigError("loss.eqvae_prob, loss.scale_equivariance_weight, loss.latent_noise_gamma and "
                              "loss.latent_mask_ratio change a KL autoencoder's sampled latent; a VQ model quantises "
                              "its latent first")
        if not 0 <= config.latent_mask_ratio < 1 or min(config.latent_noise_gamma, config.scale_equivariance_weight) < 0:
            raise ConfigError(f"loss.latent_mask_ratio must be in [0, 1), loss.latent_noise_gamma and "
                              f"loss.scale_equivariance_weight ≥ 0, got {config.latent_mask_ratio}, "
                              f"{config.latent_noise_gamma} and {config.scale_equivariance_weight}")
        if model.frozen_encoder and (any(_latent_options(config)) or config.vf_model is not None):
            raise ConfigError(f"model {model.registry_name} keeps its pretrained encoder frozen, so its latents are "
                              "that encoder's: loss.eqvae_prob, loss.scale_equivariance_weight, loss.latent_noise_gamma, "
                              "loss.latent_mask_ratio and loss.vf_model, which shape a trained encoder's latents, must "
                              "stay off (RAE's own latent noise is model.noise_tau)")
        if model.regularizer == "vq" and config.learn_logvar:
            raise ConfigError("loss.learn_logvar applies to KL autoencoders (LDM's loss); a VQ model's loss is "
                              "taming's mean reconstruction, which has no log-variance")
        loss = cls(config, model.config.out_channels)
        loss.regularizer = model.regularizer  # "kl": the posterior's KL; "vq": the quantiser's loss
        if config.latent_mask_ratio > 0:
            # DeTok's learned mask token, here in the latent the decoder reads; it starts at the prior's mean
            loss.mask_token = nn.Parameter(torch.zeros(model.config.latent_channels))
        if config.vf_model is not None:
            if model.regularizer == "vq":
                raise ConfigError("loss.vf_model aligns a KL autoencoder's sampled latent; use it with autoencoder-kl")
            backbone = load_backbone(config.vf_model, config.vf_pretrained, config.vf_image_size)
            loss.alignment = VisionAlignment(backbone, model.config.latent_channels, config.vf_cos_margin,
                                             config.vf_distmat_margin)
            loss._encoder_layer.append(model.encoder.conv_out.weight)
        return loss

    def draw_transform(self, x: torch.Tensor, generator: torch.Generator,
                       downsampling_factor: int) -> BatchRegularisers | None:
        """This batch's latent regularisers (``losses.latent_transforms``), drawn from ``generator``, or None."""
        config = self.config
        latent_size = (-(-x.shape[-2] // downsampling_factor), -(-x.shape[-1] // downsampling_factor))
        transform = draw_eqvae(config.eqvae_prob, min(latent_size), generator)
        if transform is None and (config.latent_noise_gamma or config.latent_mask_ratio):
            mask = None
            if self.mask_token is not None:
                mask = draw_mask(x.shape[0], latent_size, config.latent_mask_ratio, generator)
            transform = LatentDenoising(config.latent_noise_gamma, generator, mask, self.mask_token,
                                        downsampling_factor)
        downsample = draw_downsampling(min(latent_size), generator) if config.scale_equivariance_weight else None
        if transform is None and downsample is None:
            return None
        return BatchRegularisers(transform, downsample)

    def last_layer(self, model: nn.Module) -> torch.Tensor:
        """The weight the adaptive weight's gradients are taken at: the decoder's last layer (the output
        convolution of LDM's decoder, the output projection of RAE's ViT)."""
        return model.last_decoder_weight()

    def generator_parameters(self) -> list[nn.Parameter]:
        """The loss's own parameters that train with the autoencoder: LDM's log-variance, VA-VAE's projection."""
        own = [self.logvar] if self.config.learn_logvar else []
        own += [self.mask_token] if self.mask_token is not None else []
        return own + (list(self.alignment.parameters()) if self.alignment is not None else [])

    def _alignment_term(self, images: torch.Tensor, output, nll_loss: torch.Tensor,
                        gradient_mean) -> tuple[torch.Tensor, dict[str, float]]:
        """vf_weight (adaptive) · L_vf on the sampled latent (VA-VAE's ``z = posterior.sample()``, before any
        other regulariser changed what the decoder got)."""
        vf, logs = self.alignment(output.z, images)
        weight = torch.tensor(self.config.vf_weight)
        if self.config.vf_adaptive and self._encoder_layer and torch.is_grad_enabled() and vf.requires_grad:
            weight = adaptive_weight(nll_loss, vf, self._encoder_layer[0], self.config.vf_weight, gradient_mean,
                                     limit=1e8)
        logs.update(vf_loss=vf.item(), vf_weight=float(weight))
        return weight * vf, logs

    def discriminator_active(self, step: int) -> bool:
        return self.discriminator is not None and step >= self.config.disc_start

    def discriminates(self, step: int, images: torch.Tensor) -> bool:
        """Whether the adversarial terms run on these images: from disc_start on, when they are at least the
        discriminator's smallest side (a latent transform may make them smaller: those batches go without)."""
        return self.discriminator_active(step) and min(images.shape[-2:]) >= self.discriminator.min_side

    @contextmanager
    def _frozen_discriminator(self) -> Iterator[None]:
        flags = [p.requires_grad for p in self.discriminator.parameters()]
        self.discriminator.requires_grad_(False)
        try:
            yield
        finally:
            for p, flag in zip(self.discriminator.parameters(), flags):
                p.requires_grad_(flag)

    def _per_pixel(self, x: torch.Tensor, x_hat: torch.Tensor, logs: dict[str, float], prefix: str = "") -> torch.Tensor:
        """|x − x̂| (or its square) + perceptual_weight · LPIPS, per pixel. LPIPS-VGG is defined from
        ``LPIPS_MIN_SIDE`` pixels (its fourth max-pool leaves no pixel below); a smaller pair — only a latent
        regulariser's transform makes one — goes without it (docs/training_image_autoencoders.md)."""
        difference = x_hat - x
        rec = difference.abs() if self.config.pixel == "l1" else difference.pow(2)
        logs[prefix + "pixel"] = rec.mean().item()
        if self._perceptual and min(x.shape[-2:]) >= LPIPS_MIN_SIDE:
            network = self._perceptual[0].to(x.device)
            perceptual = network(x.contiguous(), x_hat.contiguous())  # (B, 1, 1, 1), carries gradient to x̂
            rec = rec + self.config.perceptual_weight * perceptual
            logs[prefix + "lpips"] = perceptual.mean().item()
        return rec

    def _nll(self, rec: torch.Tensor) -> torch.Tensor:
        """LDM's nll = rec / exp(s) + s, summed over pixels per image (or their mean), averaged over the batch."""
        nll = rec / torch.exp(self.logvar) + self.logvar
        return nll.sum() / rec.shape[0] if self.config.reduction == "sum" else nll.mean()

    def _scale_equivariance_term(self, output, logs: dict[str, float]) -> torch.Tensor | float:
        """α · nll(down(x), D(down(z))): the same reconstruction loss on scale equivariance's pair (0 without)."""
        small = getattr(output, "downsampled_reconstruction", None)
        if small is None:
            return 0.0
        term = self._nll(self._per_pixel(output.downsampled_target, small, logs, prefix="downsampled_"))
        logs["scale_equivariance"] = term.item()
        return self.config.scale_equivariance_weight * term

    def forward(self, x: torch.Tensor, output, kl_weight: float | None = None, step: int = 0,
                last_layer: torch.Tensor | None = None, gradient_mean=None) -> tuple[torch.Tensor, dict[str, float]]:
        """The autoencoder's loss; ``output`` has ``.reconstruction`` and ``.posterior`` (and ``.quantized``
        for a VQ model). ``gradient_mean``: see ``adaptive_weight``."""
        weight = self.beta if kl_weight is None else kl_weight
        images, x = x, target_of(output, x)
        x_hat = output.reconstruction
        logs: dict[str, float] = {}
        rec = self._per_pixel(x, x_hat, logs)
        if self.regularizer == "vq":
            nll_loss = rec.mean()  # LPIPS (B, 1, 1, 1) is broadcast over the pixels, as in taming
            quantized = output.quantized
            loss = nll_loss + self.config.codebook_weight * quantized.loss
            logs.update(vq_loss=quantized.loss.item(), commitment=quantized.commitment.item(),
                        perplexity=quantized.perplexity.item())
        else:
            nll_loss = self._nll(rec)
            kl_loss = output.posterior.kl().sum() / x.shape[0]
            loss = nll_loss + weight * kl_loss + self._scale_equivariance_term(output, logs)
            logs.update(kl=kl_loss.item(), kl_weight=float(weight))
            if self.alignment is not None:
                aligned, alignment_logs = self._alignment_term(images, output, nll_loss, gradient_mean)
                loss = loss + aligned
                logs.update(alignment_logs)
        if self.discriminates(step, x_hat):
            with self._frozen_discriminator():
                g_loss = -self.discriminator(x_hat.contiguous()).mean()
            if last_layer is not None and torch.is_grad_enabled():
                d_weight = adaptive_weight(nll_loss, g_loss, last_layer, self.config.disc_weight, gradient_mean)
            else:
                d_weight = torch.tensor(self.config.disc_weight)
            loss = loss + d_weight * g_loss
            logs.update(g_loss=g_loss.item(), d_weight=float(d_weight))
        logs.update(loss=loss.item(), reconstruction=nll_loss.item(), logvar=self.logvar.item())
        return loss, logs

    def discriminator_step_loss(self, x: torch.Tensor, x_hat: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The discriminator's loss on real ``x`` and reconstructions, detached here whatever the caller did."""
        logits_real = self.discriminator(x.contiguous().detach())
        logits_fake = self.discriminator(x_hat.contiguous().detach())
        loss = self.d_loss(logits_real, logits_fake)
        return loss, {"d_loss": loss.item(), "logits_real": logits_real.mean().item(),
                      "logits_fake": logits_fake.mean().item()}


# RAE's decoder recipe (bytetriper/RAE, configs/stage1/training/DINOv2-B_decXL.yaml and src/train_stage1.py;
# docs/rae.md): L1 + LPIPS averaged over pixels, hinge GAN at 0.75 with the adaptive weight. RAE's L1 is on
# images in [0, 1], half vaekit's on [-1, 1]; LPIPS at 2 keeps RAE's ratio, making the whole loss (adaptive
# term included) exactly twice RAE's, which AdamW's updates do not see. The GAN starts at RAE's epoch 8 of
# ImageNet-1k at batch 512 (2,502 steps an epoch).
LOSSES.register_preset("rae-lpips-gan", "lpips-gan", reduction="mean", perceptual_weight=2.0, kl_weight=0.0,
                       disc_weight=0.75, disc_start=20016, disc_loss="hinge")

"""Small fully connected models on flattened images: VAE, plain autoencoder, β-VAE, conditional VAE.

Inputs are images ``(B, C, H, W)`` (or already flat ``(B, C·H·W)``) with values in [0, 1]; ``decode``
returns ``(B, C, H, W)``, the mean of p(x|z). Labels, where used, are integer class ids ``(B,)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vaekit.errors import ConfigError, VaekitError
from vaekit.models.base import Autoencoder
from vaekit.models.distributions import Bernoulli, ContinuousBernoulli, DiagonalGaussian
from vaekit.registry import MODELS


@dataclass
class MLPAutoencoderConfig:
    input_shape: tuple[int, ...] | None = None
    """(C, H, W) of the data; the trainer fills it in from the dataset."""
    hidden_dims: tuple[int, ...] = (512, 256)
    """Widths of the encoder's hidden layers; the decoder mirrors them."""
    latent_dim: int = 8
    """Dimensions of the latent code z."""
    likelihood: Literal["bernoulli", "continuous-bernoulli", "gaussian"] = "bernoulli"
    """p(x|z): Bernoulli (the usual choice; a density only for binary data), continuous Bernoulli (a
    density on [0, 1]), or Gaussian with one learned scale (a density on the reals)."""

    def __post_init__(self) -> None:
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be at least 1, got {self.latent_dim}")
        if any(width < 1 for width in self.hidden_dims):
            raise ValueError(f"hidden_dims must be positive, got {list(self.hidden_dims)}")
        if self.input_shape is not None and (not self.input_shape or any(s < 1 for s in self.input_shape)):
            raise ValueError(f"input_shape must be positive sizes like [1, 16, 16], got {list(self.input_shape)}")


@dataclass
class MLPVAEConfig(MLPAutoencoderConfig):
    beta: float = 1.0
    """Weight of the KL term in the training loss (β-VAE when ≠ 1); evaluation always uses β = 1."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta < 0:
            raise ValueError(f"beta must be non-negative, got {self.beta}")


@dataclass
class ConditionalVAEConfig(MLPVAEConfig):
    num_classes: int | None = None
    """Number of labels; the trainer fills it in from the dataset."""


class VAEOutput(NamedTuple):
    posterior: DiagonalGaussian
    z: torch.Tensor
    likelihood: Bernoulli | DiagonalGaussian


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


@MODELS.register("mlp-vae", MLPVAEConfig)
class MLPVAE(Autoencoder):
    """Gaussian encoder q(z|x) = N(μ(x), diag σ²(x)), prior N(0, I), factorised decoder p(x|z)."""

    value_range = (0.0, 1.0)
    loss_name = "elbo"
    adam_betas = (0.9, 0.999)
    latent_layout = "vector"
    has_likelihood = True

    @classmethod
    def config_for_data(cls, params, image_shape, num_classes, data_name):
        updates = {}
        if params.input_shape is None:
            updates["input_shape"] = image_shape
        elif tuple(params.input_shape) != image_shape:
            raise ConfigError(f"model.input_shape is {list(params.input_shape)} but {data_name} has images of shape "
                              f"{list(image_shape)}; remove model.input_shape to take it from the data")
        return updates

    def __init__(self, config: MLPAutoencoderConfig):
        super().__init__()
        if config.input_shape is None:
            raise VaekitError(
                "model.input_shape is not set: pass input_shape=(C, H, W) of your data "
                "(the trainer sets it from the dataset)"
            )
        self.config = config
        self.input_shape = tuple(config.input_shape)
        self.data_dim = math.prod(self.input_shape)
        label_dim = self.num_classes if self.conditional else 0
        hidden = list(config.hidden_dims)
        encoder_out = config.latent_dim * (1 if self.deterministic else 2)
        self.encoder = mlp([self.data_dim + label_dim, *hidden, encoder_out])
        self.decoder = mlp([config.latent_dim + label_dim, *reversed(hidden), self.data_dim])
        if config.likelihood == "gaussian":
            self.log_scale = nn.Parameter(torch.zeros(()))

    @property
    def num_classes(self) -> int:
        return 0

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def _flatten(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) not in (self.input_shape, (self.data_dim,)):
            raise VaekitError(
                f"{type(self).__name__} expects inputs of shape (batch, {', '.join(map(str, self.input_shape))}), "
                f"got {tuple(x.shape)}; resize the data or train a model for this shape"
            )
        return x.reshape(x.shape[0], self.data_dim)

    def _with_labels(self, h: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return h

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> DiagonalGaussian:
        """x: ``(B, C, H, W)`` in [0, 1] -> q(z|x) over ``(B, latent_dim)``."""
        h = self.encoder(self._with_labels(self._flatten(x), labels))
        if self.deterministic:
            return DiagonalGaussian(h, h, deterministic=True)
        return DiagonalGaussian.from_parameters(h)

    def decode_distribution(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> Bernoulli | DiagonalGaussian:
        """z: ``(B, latent_dim)`` -> p(x|z) over ``(B, C, H, W)``.

        Extra leading dims pass through: z ``(B, K, latent_dim)`` (K samples per example, labels
        ``(B,)``) gives a distribution over ``(B, K, C, H, W)``.
        """
        out = self.decoder(self._with_labels(z, labels)).reshape(*z.shape[:-1], *self.input_shape)
        if self.config.likelihood == "bernoulli":
            return Bernoulli(out)
        if self.config.likelihood == "continuous-bernoulli":
            return ContinuousBernoulli(out)
        return DiagonalGaussian(out, (2 * self.log_scale).expand_as(out))

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """z: ``(B, latent_dim)`` -> mean of p(x|z), ``(B, C, H, W)``."""
        return self.decode_distribution(z, labels).mean

    def forward(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None = None,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> VAEOutput:
        posterior = self.encode(x, labels)
        z = posterior.sample(generator) if sample else posterior.mode()
        return VAEOutput(posterior, z, self.decode_distribution(z, labels))


@MODELS.register("mlp-ae", MLPAutoencoderConfig)
class MLPAutoencoder(MLPVAE):
    """The same networks without noise or KL: a deterministic code, for comparison with the VAE."""

    deterministic = True


@MODELS.register("cvae", ConditionalVAEConfig)
class ConditionalVAE(MLPVAE):
    """VAE with a one-hot label concatenated to the encoder's input and the decoder's input."""

    conditional = True

    @classmethod
    def config_for_data(cls, params, image_shape, num_classes, data_name):
        updates = super().config_for_data(params, image_shape, num_classes, data_name)
        if num_classes is None:
            raise ConfigError(f"model {cls.registry_name} needs labels, and {data_name} has none")
        if params.num_classes is None:
            updates["num_classes"] = num_classes
        elif params.num_classes != num_classes:
            raise ConfigError(f"model.num_classes is {params.num_classes} but {data_name} has {num_classes} classes")
        return updates

    def __init__(self, config: ConditionalVAEConfig):
        if config.num_classes is None or config.num_classes < 2:
            raise VaekitError(
                f"a conditional VAE needs model.num_classes >= 2 (got {config.num_classes}); "
                "train it on a labelled dataset"
            )
        super().__init__(config)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def _with_labels(self, h: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:
            raise VaekitError("a conditional VAE needs labels: call encode/decode with labels=<(B,) class ids>")
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise VaekitError(
                f"labels must be class ids in [0, {self.num_classes}); got values in "
                f"[{int(labels.min())}, {int(labels.max())}] (is the dataset labelled?)"
            )
        one_hot = F.one_hot(labels.long(), self.num_classes).to(h.dtype)
        one_hot = one_hot.view(len(labels), *[1] * (h.ndim - 2), self.num_classes)
        return torch.cat([h, one_hot.expand(*h.shape[:-1], self.num_classes)], dim=-1)


MODELS.register_preset("beta-vae", "mlp-vae", beta=4.0)

"""What the interactive explorer needs of a run, computed once: the model, its test set's codes and map,
thumbnails, and (small VAEs) the decoder's weights for decoding in the page.

Arrays travel as base64 of little-endian float32 (``encode_floats``), which JavaScript reads straight
into a ``Float32Array``; a 16×16 image is 1 KB, kl-f8-tiny's 256×256 decode 1 MB.
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vaekit.data import build_dataset
from vaekit.data.ranges import range_map
from vaekit.errors import VaekitError
from vaekit.explore.latents import encode_dataset
from vaekit.io.images import open_rgb, to_channels, to_tensor
from vaekit.io.models import load_model
from vaekit.runs import read_run_config

MAX_TEST_CODES = 1000
"""Test examples on the map (and searched for nearest neighbours)."""
MAX_IMAGE_CHOICES = 24
"""Test images offered for an image autoencoder."""
ACTIVE_THRESHOLD = 0.01


def encode_floats(x: torch.Tensor | np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(np.asarray(x, dtype="<f4")).tobytes()).decode("ascii")


def decode_floats(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text, validate=True), dtype="<f4")


def png_data_url(image: torch.Tensor, value_range: tuple[float, float]) -> str:
    """``(C, H, W)`` in ``value_range`` → a PNG data URL (grey for one channel)."""
    from PIL import Image

    low, high = value_range
    array = ((image.float().clamp(low, high) - low) / (high - low) * 255).round().byte().permute(1, 2, 0).numpy()
    picture = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array, "L" if array.shape[2] == 1 else "RGB")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def decoder_weights(model: nn.Module) -> dict:
    """A small VAE's decoder as JSON: its linear layers (SiLU between them) and what maps the last
    layer's output to the image (the likelihood's mean)."""
    linears = [m for m in model.decoder if isinstance(m, nn.Linear)]
    return {"layers": [{"in": m.in_features, "out": m.out_features, "weight": encode_floats(m.weight.detach()),
                        "bias": encode_floats(m.bias.detach())} for m in linears],
            "output": model.config.likelihood}


class Explorer:
    """The run's model and test set as the explorer sees them; ``decode``/``encode`` serve requests."""

    def __init__(self, model: nn.Module, test, seed: int = 0, device: str | torch.device = "cpu"):
        if model.kind != "autoencoder":
            raise VaekitError(f"the explorer shows autoencoders, not a {model.registry_name}")
        self.model, self.test, self.seed, self.device = model.eval(), test, seed, torch.device(device)
        self.to_model = range_map(test.value_range, model.value_range)
        self.layout = model.latent_layout

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str | torch.device = "cpu") -> "Explorer":
        config = read_run_config(run_dir)
        return cls(load_model(run_dir, device=device), build_dataset(config.data, "test"), config.seed, device)

    # -------------------------------------------------------------------------------- the page's data

    @torch.no_grad()
    def info(self, with_decoder: bool = False) -> dict:
        """Everything the page draws before the first request. ``with_decoder`` adds the decoder's weights
        (small VAEs), so that the page decodes without a server."""
        return self._vector_info(with_decoder) if self.layout == "vector" else self._image_info()

    def _choices(self, count: int) -> list[int]:
        return self.test.spread_indices(min(count, len(self.test)), self.seed)

    def _vector_info(self, with_decoder: bool) -> dict:
        model = self.model
        indices = self._choices(MAX_TEST_CODES)
        from torch.utils.data import Subset

        stats = encode_dataset(model, Subset(self.test, indices), 256, self.device, self.to_model)
        means = stats.means.double()
        d = means.shape[1]
        if d == 2:
            method, origin, axes = "latent", torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)
        else:
            method, origin = "pca", means.mean(0)
            _, _, v = torch.linalg.svd(means - origin, full_matrices=False)
            axes = v[:2]
        points = (means - origin) @ axes.T
        x, labels = self.test.__getitems__(indices)
        thumbnails = [png_data_url(image, self.test.value_range) for image in x]
        payload = {
            "kind": "vector", "model": model.registry_name, "latent_dim": d,
            "image_shape": list(model.input_shape), "deterministic": model.deterministic,
            "conditional": model.conditional, "classes": list(self.test.class_names),
            "labels": labels.tolist(), "order": stats.order_by_kl(), "kl_per_dim": stats.kl_per_dim.tolist(),
            "active": (stats.activity > ACTIVE_THRESHOLD).tolist(),
            "map": {"method": method, "origin": origin.tolist(), "axes": axes.tolist(), "points": points.tolist()},
            "codes": encode_floats(means), "thumbnails": thumbnails,
        }
        if with_decoder:
            payload["decoder"] = decoder_weights(model)
        return payload

    def _image_info(self) -> dict:
        indices = self._choices(MAX_IMAGE_CHOICES)
        x, _ = self.test.__getitems__(indices)
        shape = list(self.model.latent_shape(*x.shape[2:]))
        return {"kind": "spatial", "model": self.model.registry_name, "image_shape": list(x.shape[1:]),
                "latent_shape": shape, "choices": len(indices),
                "thumbnails": [png_data_url(image, self.test.value_range) for image in x]}

    # -------------------------------------------------------------------------------- requests

    @torch.no_grad()
    def decode(self, z: np.ndarray, label: int | None = None, latent_shape: list[int] | None = None) -> np.ndarray:
        """A latent (flat) → the decoded image ``(C, H, W)`` in the data's value range, float32."""
        model = self.model
        if self.layout == "vector":
            expected = (model.latent_dim,)
        else:
            expected = tuple(latent_shape) if latent_shape else None
            if expected is None or len(expected) != 3 or expected[0] != model.config.latent_channels:
                raise RequestError(f"an image autoencoder's latent needs its shape [c, h, w] with c = "
                                   f"{model.config.latent_channels}")
            if min(expected[1:]) < 1 or math.prod(expected[1:]) > 256 * 256:
                raise RequestError("latent sides must be between 1 and 256")
        if z.size != math.prod(expected):
            raise RequestError(f"the latent has {z.size} values; this model's has {math.prod(expected)} "
                               f"(shape {list(expected)})")
        if not np.isfinite(z).all():
            raise RequestError("the latent holds NaN or infinite values")
        labels = None
        if model.conditional:
            if label is None or not 0 <= label < model.num_classes:
                raise RequestError(f"this conditional model needs a label between 0 and {model.num_classes - 1}")
            labels = torch.tensor([label], device=self.device)
        latent = torch.from_numpy(z.copy()).float().to(self.device).reshape(1, *expected)
        image = model.decode(latent, labels) if self.layout == "vector" else model.decode(latent)
        low, high = self.test.value_range
        back = (image.clamp(*model.value_range) - model.value_range[0]) / (model.value_range[1] - model.value_range[0])
        return (back * (high - low) + low)[0].float().cpu().numpy()

    @torch.no_grad()
    def encode_index(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Test image ``index`` of the choices → (its latent (posterior mean), the image), float32."""
        choices = self._choices(MAX_IMAGE_CHOICES if self.layout == "spatial" else MAX_TEST_CODES)
        if not 0 <= index < len(choices):
            raise RequestError(f"unknown image {index}: there are {len(choices)} (0 to {len(choices) - 1})")
        x, labels = self.test.__getitems__([choices[index]])
        return self._encode(x, labels)

    @torch.no_grad()
    def encode_upload(self, data: bytes, max_pixels: int) -> tuple[np.ndarray, np.ndarray]:
        """An uploaded image (bytes) → (latent, image): image autoencoders only; size and pixel limits apply."""

        if self.layout != "spatial":
            raise RequestError("uploads are for image autoencoders; a small VAE explores its test set")
        try:
            picture = open_rgb(io.BytesIO(data), max_pixels, "the upload")
        except VaekitError as err:
            raise RequestError(str(err)) from err
        f = self.model.downsampling_factor
        side = min(picture.size)
        side = max(f, min(side, 512) // f * f)
        x = to_channels(to_tensor(picture, side), self.model.config.in_channels)  # [-1, 1]; luma for 1 channel
        low, high = self.test.value_range
        return self._encode((x + 1) / 2 * (high - low) + low, None)

    def _encode(self, x: torch.Tensor, labels: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray]:
        model = self.model
        posterior = model.encode(self.to_model(x.to(self.device)), model.labels_for(None if labels is None
                                                                                      else labels.to(self.device)))
        return posterior.mean[0].float().cpu().numpy(), x[0].float().cpu().numpy()


class RequestError(VaekitError):
    """A request the explorer cannot serve: answered with 400 and this message."""

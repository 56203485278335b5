"""Exploration of image autoencoders (spatial latents): reconstructions, interpolation between images,
nearest neighbours, prior samples (with why they are meaningless), and the channel study."""

from __future__ import annotations

import torch

from vaekit.explore.interpolate import interpolate, pick_pairs, smoothness
from vaekit.explore.neighbours import nearest_neighbours
from vaekit.explore.base import Explorer
from vaekit.viz import plots
from vaekit.viz.grids import save_grid


class ImageExplorer(Explorer):
    """Figures for models whose latents are ``(c, h, w)``; images are in the model's [-1, 1]."""

    def _images(self, indices: list[int]) -> torch.Tensor:
        return self.to_model_range(self.test.__getitems__(indices)[0])

    def _latent_shape(self) -> tuple[int, ...]:
        height, width = self.test.image_shape[1:]
        return self.model.latent_shape(height, width)

    def reconstructions(self) -> None:
        x = self._images(self.test.spread_indices(self.options.num_examples, self.seed))
        with torch.no_grad():
            reconstructed = self.model.reconstruct(x).clamp(*self.value_range)
        save_grid(self._path("reconstructions.png"), torch.stack([x, reconstructed]), value_range=self.value_range)
        self._add("reconstructions", "reconstructions.png", "Reconstructions",
                  f"Top: {len(x)} held-out images; bottom: decoded from the posterior mode.")

    def samples(self) -> None:
        n = self.options.sample_grid
        z = torch.randn((n, *self._latent_shape()), generator=torch.Generator().manual_seed(self.seed))
        with torch.no_grad():
            images = self.model.decode(z).clamp(*self.value_range)
        save_grid(self._path("samples.png"), images[None], value_range=self.value_range)
        std = float(self.stats.means.std())
        self._add("samples", "samples.png", "Decodings of prior draws (not samples of images)",
                  f"Decodings of z ~ N(0, I). With a KL weight near 1e-6 the encoder is free to use any scale "
                  f"(here the latent means have std {std:.2f}, not 1) and any correlation across positions, so "
                  "independent Gaussian noise is nothing like a real latent and decodes to texture. An image "
                  "autoencoder is a compressor, not a generator: latent diffusion learns the prior over these "
                  "latents.")

    def interpolations(self) -> None:
        pairs = pick_pairs(self.stats.labels, self.options.interpolation_pairs, self.seed)
        shape = self._latent_shape()
        start = self.stats.means[[i for i, _ in pairs]].view(len(pairs), *shape)
        end = self.stats.means[[j for _, j in pairs]].view(len(pairs), *shape)
        strips = interpolate(self.model, start, end, self.options.interpolation_steps, "linear").clamp(*self.value_range)
        self.extra_metrics["interpolation_smoothness"] = smoothness(strips)
        save_grid(self._path("interpolation_linear.png"), strips, value_range=self.value_range)
        self._add("interpolation_linear", "interpolation_linear.png", "Interpolation between images",
                  "Decoded straight-line paths between the latents of pairs of held-out images: with a weak KL "
                  "the path cross-fades rather than morphs.")

    def neighbours(self) -> None:
        queries = self.test.spread_indices(self.options.neighbour_queries, self.seed + 1)
        found = nearest_neighbours(self.stats.means, queries, self.options.neighbours)
        rows = torch.stack([self._images([q] + list(row)) for q, row in zip(queries, found)])
        save_grid(self._path("neighbours.png"), rows, value_range=self.value_range)
        self._add("neighbours", "neighbours.png", "Nearest neighbours",
                  f"Each row: a held-out image, then the {found.shape[1]} held-out images whose latents are "
                  "nearest (Euclidean, over all channels and positions).")

    def channels(self) -> None:
        x = self._images(self.test.spread_indices(1, self.seed))
        with torch.no_grad():
            latent = self.model.encode(x).mode()
            zeroed = []
            for channel in range(latent.shape[1]):
                z = latent.clone()
                z[:, channel] = 0
                zeroed.append(self.model.decode(z, size=x.shape[2:]))
            full = self.model.decode(latent, size=x.shape[2:])
        plots.channel_maps(self._path("channels.png"), latent[0].numpy(), "latent channels of one image")
        grid = torch.stack([torch.cat([x, full, *zeroed]).clamp(*self.value_range)])
        save_grid(self._path("channels_zeroed.png"), grid, value_range=self.value_range)
        c = latent.shape[1]
        scaled = self.model.scale_latents(self.stats.means.view(len(self.stats.means), c, -1)).transpose(0, 1).reshape(c, -1)
        plots.channel_histograms(self._path("channel_histograms.png"), scaled.numpy(),
                                 "scaled latent means (the model's latent normalisation), against N(0, 1)")
        self._add("channels", "channels.png", "Latent channels",
                  "Each latent channel of one held-out image as a heat map.")
        self._add("channels_zeroed", "channels_zeroed.png", "Decoded with one channel zeroed",
                  "The image, its reconstruction, then the reconstruction with channel 0, 1, ... set to zero: "
                  "what each channel carries.")
        self._add("channel_histograms", "channel_histograms.png", "Channel statistics",
                  "Per-channel histograms of the held-out latents after the scaling factor, with the N(0, 1) "
                  "density a diffusion model expects.")

    def code_usage(self) -> None:
        """VQ models: how often each code is used over the test images, and what swapping every code for its
        nearest other code does to a decoded image (how smooth the codebook is)."""
        if self.model.regularizer != "vq":
            return
        quantizer = self.model.quantize
        x = self._images(list(range(min(len(self.test), 256))))
        with torch.no_grad():
            indices = torch.cat([self.model.encode_indices(x[i:i + 32]) for i in range(0, len(x), 32)])
            counts = torch.bincount(indices.flatten(), minlength=quantizer.num_embeddings)
            neighbour = nearest_other_code(quantizer.codebook())
            shown = x[:self.options.num_examples]
            shown_indices = indices[:len(shown)]
            own = self.model.decode_indices(shown_indices, size=shown.shape[2:]).clamp(*self.value_range)
            swapped = self.model.decode_indices(neighbour[shown_indices], size=shown.shape[2:]).clamp(*self.value_range)
        used = int((counts > 0).sum())
        ranked = counts.sort(descending=True).values.double()
        plots.bars(self._path("code_usage.png"), [str(i) if i % max(1, len(ranked) // 8) == 0 else ""
                                                  for i in range(len(ranked))],
                   (ranked / ranked.sum()).tolist(), xlabel="codes, most used first", ylabel="share of positions",
                   title=f"code usage: {used} of {len(counts)} codes")
        self._add("code_usage", "code_usage.png", "Codebook usage",
                  f"The share of latent positions of {len(x)} held-out images that take each code, most used first: "
                  f"{used} of {len(counts)} codes are used.")
        save_grid(self._path("code_neighbours.png"), torch.stack([shown, own, swapped]), value_range=self.value_range)
        self._add("code_neighbours", "code_neighbours.png", "Codes replaced by their nearest neighbours",
                  "Top: held-out images; middle: decoded from their codes; bottom: every code replaced by its "
                  "nearest other code in the codebook before decoding.")

    def figures_to_draw(self) -> tuple:
        return (self.reconstructions, self.samples, self.interpolations, self.neighbours, self.channels,
                self.code_usage, self.progression, self.losses)


def nearest_other_code(codebook: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """For each code ``(K, c)``, the index of its nearest other code; ``chunk`` rows at a time, so the
    distances take chunk × K floats (64 MB for 16,384 codes) instead of K² (1 GiB)."""
    out = []
    for start in range(0, len(codebook), chunk):
        distances = torch.cdist(codebook[start:start + chunk], codebook)
        rows = torch.arange(len(distances))
        distances[rows, rows + start] = float("inf")
        out.append(distances.argmin(1))
    return torch.cat(out)


"""The figures of a small VAE (vector latents ``(B, d)``)."""

from __future__ import annotations

import numpy as np
import torch

from vaekit.errors import VaekitError
from vaekit.explore.arithmetic import apply_attribute, attribute_vector
from vaekit.explore.base import Explorer
from vaekit.explore.interpolate import interpolate, latent_walk, pick_pairs, smoothness
from vaekit.explore.latents import class_centroids, latent_map
from vaekit.explore.neighbours import nearest_neighbours
from vaekit.explore.traverse import traverse
from vaekit.viz import plots
from vaekit.viz.gif import save_gif
from vaekit.viz.grids import save_grid


class VectorExplorer(Explorer):
    """Reconstructions, prior samples, interpolations, latent maps, traversals, the latent walk,
    neighbours, attribute arithmetic and the posterior-collapse view."""

    def reconstructions(self) -> None:
        indices = self.test.spread_indices(self.options.num_examples, self.seed)
        x, labels = self._examples(indices)
        with torch.no_grad():
            reconstructed = self.model.decode(self.model.encode(x, labels).mean, labels)
        save_grid(self._path("reconstructions.png"), torch.stack([x, reconstructed]))
        self._add("reconstructions", "reconstructions.png", "Reconstructions",
                  f"Top: {len(indices)} test images; bottom: their reconstructions, decoded from the posterior mean.")

    def samples(self) -> None:
        n = self.options.sample_grid
        generator = torch.Generator().manual_seed(self.seed)
        d = self.model.latent_dim
        if self.model.conditional:
            classes = self.model.num_classes
            z = torch.randn((classes * n, d), generator=generator)
            labels = torch.arange(classes).repeat_interleave(n)
            with torch.no_grad():
                images = self.model.decode(z, labels).view(classes, n, *self.test.image_shape)
            plots.labelled_grid(self._path("samples.png"), images, self.test.class_names, "samples from the prior")
            caption = f"Decodings of z ~ N(0, I), one row per class label ({n} draws each)."
        else:
            z = torch.randn((n * n, d), generator=generator)
            with torch.no_grad():
                images = self.model.decode(z).view(n, n, *self.test.image_shape)
            save_grid(self._path("samples.png"), images)
            caption = f"Decodings of {n * n} draws z ~ N(0, I)."
        if self._is_autoencoder:
            caption += (" This is a plain autoencoder: nothing made its codes follow N(0, I), so most draws land "
                        "where the decoder never saw a code. That is why a VAE is needed to sample.")
        self._add("samples", "samples.png", "Samples from the prior" + (" (autoencoder)" if self._is_autoencoder else ""),
                  caption)

    def interpolations(self) -> None:
        pairs = pick_pairs(self.stats.labels, self.options.interpolation_pairs, self.seed)
        start, end = [p[0] for p in pairs], [p[1] for p in pairs]
        means, labels = self.stats.means, self.stats.labels
        row_labels = [f"{self._class_name(int(labels[i]))} → {self._class_name(int(labels[j]))}".strip(" →")
                      or f"#{i} → #{j}" for i, j in pairs]
        for method, title in (("linear", "linear"), ("slerp", "spherical (slerp)")):
            strips = interpolate(self.model, means[start], means[end], self.options.interpolation_steps, method,
                                 labels[start], labels[end])
            plots.labelled_grid(self._path(f"interpolation_{method}.png"), strips, row_labels,
                                f"{title} interpolation")
            if method == "linear":
                self.extra_metrics["interpolation_smoothness"] = smoothness(strips)
        what = "pairs of test images of different classes" if self.test.has_labels else "random pairs of test images"
        caption = (f"Decoded paths between the posterior means of {what}; the end points are the two images' "
                   "reconstructions.")
        self._add("interpolation_linear", "interpolation_linear.png", "Linear interpolation", caption)
        self._add("interpolation_slerp", "interpolation_slerp.png", "Spherical interpolation",
                  caption + " Slerp keeps the path's norm near the prior's shell instead of cutting through its centre.")

    def latent_maps(self) -> None:
        d = self.model.latent_dim
        if d < 2:
            self.skipped.append(("latent map", "the latent is 1-D; see the traversal instead"))
            return
        rng = np.random.default_rng(self.seed)
        count = min(self.options.map_examples, len(self.stats.means))
        subset = np.sort(rng.choice(len(self.stats.means), count, replace=False))
        means = self.stats.means[subset].numpy()
        if d == 2:
            panels = {"latent (posterior means)": latent_map(means, "latent")}
        else:
            panels = {"PCA": latent_map(means, "pca", self.seed), "t-SNE": latent_map(means, "tsne", self.seed)}
            try:
                panels["UMAP"] = latent_map(means, "umap", self.seed)
            except ImportError as err:
                self.skipped.append(("UMAP panel of the latent map",
                                     f"umap-learn is not installed ({err}): pip install 'vaekit[umap]'"))
        labels = self.stats.labels[subset].numpy() if self.test.has_labels else None
        plots.scatter_panels(self._path("latent_map.png"), panels, labels, self.test.class_names)
        how = "the 2-D latent itself" if d == 2 else f"{', '.join(panels)} projections of the {d}-D means"
        colour = "coloured by label" if labels is not None else "(the data has no labels to colour by)"
        self._add("latent_map", "latent_map.png", "Latent map",
                  f"Posterior means of {count} test images: {how}, {colour}.")

    def traversals(self) -> None:
        order = self.stats.order_by_kl()
        threshold = self.config.eval.active_unit_threshold
        inactive = [row for row, dim in enumerate(order) if self.stats.activity[dim] <= threshold]
        base_index = self.test.spread_indices(1, self.seed)[0]
        label = self.stats.labels[base_index:base_index + 1]
        rows = traverse(self.model, self.stats.means[base_index], order, self.options.traversal_steps,
                        self.options.traversal_extent, self.model.labels_for(label))
        row_labels = [f"z{dim}  KL {self.stats.kl_per_dim[dim]:.2f}" + ("  (inactive)" if r in inactive else "")
                      for r, dim in enumerate(order)]
        extent = self.options.traversal_extent
        plots.labelled_grid(self._path("traversals.png"), rows, row_labels, "latent traversals",
                            col_labels=[f"{v:+.1f}" for v in np.linspace(-extent, extent, self.options.traversal_steps)],
                            marked_rows=inactive)
        self._add("traversals", "traversals.png", "Traversals",
                  f"Each row sweeps one dimension of a test image's code over [−{extent:g}, {extent:g}], rows sorted "
                  f"by KL; inactive dimensions (activity ≤ {threshold:g}) are in red — they change nothing.")

    def latent_walk(self) -> None:
        if not self.test.has_labels:
            self.skipped.append(("latent walk GIF", "it visits class centroids, and the data has no labels"))
            return
        centroids = class_centroids(self.stats.means, self.stats.labels, self.test.num_classes)
        if not torch.isfinite(centroids).all():
            self.skipped.append(("latent walk GIF", "some classes have no test example"))
            return
        frames = latent_walk(self.model, centroids, self.options.walk_frames_per_class)
        save_gif(self._path("latent_walk.gif"), frames)
        self._add("latent_walk", "latent_walk.gif", "Latent walk",
                  f"A loop through the centroid of each class in turn ({', '.join(self.test.class_names)}), "
                  f"{self.options.walk_frames_per_class} decoded frames per leg along spherical paths.")

    def neighbours(self) -> None:
        queries = self.test.spread_indices(self.options.neighbour_queries, self.seed + 1)
        found = nearest_neighbours(self.stats.means, queries, self.options.neighbours)
        rows = [self.test.__getitems__([q] + list(row))[0] for q, row in zip(queries, found)]
        plots.labelled_grid(self._path("neighbours.png"), torch.stack(rows), [f"query {q}" for q in queries],
                            "nearest neighbours in latent space",
                            col_labels=["query"] + [f"{i + 1}" for i in range(found.shape[1])])
        self._add("neighbours", "neighbours.png", "Nearest neighbours",
                  f"Each row: a test image, then the {found.shape[1]} test images whose posterior means are "
                  "nearest to its own (Euclidean), nearest first.")

    def arithmetic(self) -> None:
        if not self.test.has_labels or self.test.num_classes < 2:
            self.skipped.append(("attribute arithmetic", "it needs two labelled classes"))
            return
        names = self.test.class_names
        source_name = self.options.arithmetic_source or names[0]
        target_name = self.options.arithmetic_target or names[1]
        for name in (source_name, target_name):
            if name not in names:
                raise VaekitError(f"explore.arithmetic_* names a class {name!r}; the classes are {', '.join(names)}")
        source, target = names.index(source_name), names.index(target_name)
        members = torch.nonzero(self.stats.labels == source).flatten()[: self.options.num_examples].tolist()
        vector = attribute_vector(self.stats.means, self.stats.labels, source, target, self.test.num_classes)
        codes = self.stats.means[members]
        x, labels = self._examples(members)
        with torch.no_grad():
            reconstructed = self.model.decode(codes, labels)
        moved = apply_attribute(self.model, codes, vector, source, target)
        plots.labelled_grid(self._path("arithmetic.png"), torch.stack([x, reconstructed, moved]),
                            ["input", "reconstruction", f"+ ({target_name} − {source_name})"],
                            f"{source_name} + ({target_name} − {source_name})")
        if self.model.conditional:
            how = f"decoded with the label {target_name} instead (a conditional VAE keeps the class in its label)"
        else:
            how = f"moved by the vector from the {source_name} centroid to the {target_name} centroid and decoded"
        self._add("arithmetic", "arithmetic.png", "Attribute arithmetic",
                  f"Test images of class {source_name}, their reconstructions, and their codes {how}.")

    def collapse(self) -> None:
        if self._is_autoencoder:
            self.skipped.append(("posterior-collapse view", "a plain autoencoder has no KL term"))
            return
        threshold = self.config.eval.active_unit_threshold
        plots.collapse_view(self._path("collapse.png"), self.stats.kl_per_dim.tolist(),
                            self.stats.activity.tolist(), threshold)
        active = int((self.stats.activity > threshold).sum())
        self._add("collapse", "collapse.png", "Posterior collapse",
                  f"Left: KL per latent dimension on the test set. Right: how much each dimension's posterior "
                  f"mean varies over the test set; {active} of {self.model.latent_dim} dimensions are above the "
                  f"active-unit threshold {threshold:g} (dashed).")

    def figures_to_draw(self) -> tuple:
        return (self.reconstructions, self.samples, self.interpolations, self.latent_maps, self.traversals,
                self.progression, self.latent_walk, self.neighbours, self.arithmetic, self.collapse, self.losses)

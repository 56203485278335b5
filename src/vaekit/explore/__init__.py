"""Exploring a trained small VAE's latent space: every figure is a function, ``explore_run`` draws them all.

- ``encode_dataset``, ``latent_map``, ``class_centroids``         (latents)
- ``lerp``, ``slerp``, ``interpolate``, ``latent_walk``, ``smoothness`` (interpolate)
- ``traverse``                                                    (traverse)
- ``nearest_neighbours``                                          (neighbours)
- ``attribute_vector``, ``apply_attribute``                       (arithmetic)
- ``layer_table``, ``compression_ratio``                          (card)
"""

from vaekit.explore.arithmetic import apply_attribute, attribute_vector
from vaekit.explore.card import compression_ratio, layer_table, parameter_count
from vaekit.explore.interpolate import interpolate, latent_walk, lerp, pick_pairs, slerp, smoothness
from vaekit.explore.latents import LatentStats, class_centroids, encode_dataset, latent_map
from vaekit.explore.neighbours import nearest_neighbours
from vaekit.explore.base import Explorer
from vaekit.explore.images import ImageExplorer
from vaekit.explore.runner import explore_run
from vaekit.explore.vectors import VectorExplorer
from vaekit.explore.traverse import traverse

__all__ = [
    "Explorer", "ImageExplorer", "LatentStats", "VectorExplorer", "apply_attribute", "attribute_vector", "class_centroids", "compression_ratio",
    "encode_dataset", "explore_run", "interpolate", "latent_map", "latent_walk", "layer_table", "lerp",
    "nearest_neighbours", "parameter_count", "pick_pairs", "slerp", "smoothness", "traverse",
]

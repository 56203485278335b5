"""Every file format vaekit reads or writes, in one place: atomic writes (``atomic``), where things are on
disk (``layout``), images (``images``), model folders and pretrained sources (``models``), diffusers and
LDM/SD weights (``convert``), training checkpoints (``checkpoints``), latent files and shards (``latents``).

Submodules are imported where used (this package imports none of them), so that the lowest of them
(``layout``, ``atomic``) can serve the config layer without pulling the model classes in.
"""

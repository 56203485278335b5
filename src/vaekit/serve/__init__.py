"""The interactive latent-space explorer: ``vaekit serve RUN_DIR`` (a local web server) and the same page,
decoding offline, inside a small VAE's report.html."""

from vaekit.serve.app import create_app, fragment, serve

__all__ = ["create_app", "fragment", "serve"]

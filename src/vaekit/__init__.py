"""vaekit: train, evaluate and explore variational autoencoders."""

from vaekit.version import __version__

from vaekit import data, losses, models  # noqa: E402,F401  (registers datasets, losses, models)
from vaekit import diffusion  # noqa: E402,F401  (registers the Stage B denoiser, its loss and the latents data)
from vaekit.evaluation import evaluate  # noqa: E402
from vaekit.training import train  # noqa: E402
from vaekit.io.models import load_model, save_model  # noqa: E402
from vaekit.models import create_model  # noqa: E402

__all__ = ["create_model", "load_model", "save_model", "train", "evaluate", "__version__"]

"""vaekit: train, evaluate and explore variational autoencoders."""

__version__ = "0.1.0"

from vaekit import data, losses, models  # noqa: E402,F401  (registers datasets, losses, models)
from vaekit.evaluation import evaluate  # noqa: E402
from vaekit.training import train  # noqa: E402
from vaekit.models.io import create_model, load_model, save_model  # noqa: E402

__all__ = ["create_model", "load_model", "save_model", "train", "evaluate", "__version__"]

"""The arbiter of the diffusability report: the feature spaces that decoded Stage B samples are scored in
against held-out real images, and the scores themselves.

Three judges, preferred in this order where they can be had:

- **FD_DINOv2**: the Fréchet distance in DINOv2 ViT-L/14 features (Stein et al. 2023, "Exposing flaws of
  generative model evaluation metrics"; the metric RAE and recent papers report): images resized to 224²
  (bicubic), ImageNet normalisation, the class token after the last norm, as their ``dgm-eval`` does.
  Loaded through timm (``vit_large_patch14_dinov2.lvd142m``, the same weights as ``torch.hub``'s
  ``dinov2_vitl14``); the weights download into the Hugging Face cache on first use.
- **FID/KID**: Inception-v3 (torch-fidelity's weights, downloaded into torch.hub's cache on first use).
- **The classifier** (offline, labelled data only): a small convolutional network trained on the data's
  labels, its features the globally averaged activations of *every* stage. The early stages respond to
  noise and texture, the late ones to shape: a network whose features are its last stage alone learns to
  ignore what does not change the class, and was measured blind to Gaussian noise up to σ 0.2. It trains
  on a large fresh stream of the built-in ``objects`` (the generator is unlimited) or on the user's own
  labelled images with early stopping on a split of its own, with label-safe augmentation either way. Its
  held-out accuracy is reported, and below ``ACCURACY_BAR`` it gives no verdict.

Every judge reports the real-vs-real floor beside its distances: the distance between two disjoint sets
of real images of the samples' size, which is what a perfect generator would score.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import torch
import torch.nn.functional as F
from torch import nn

from vaekit.losses.perceptual import WeightsUnavailable
from vaekit.metrics.frechet import frechet_distance, kernel_distance
from vaekit.metrics.generation import precision_recall

log = logging.getLogger("vaekit")

ACCURACY_BAR = 0.6
"""The least held-out accuracy at which the classifier's feature space may decide a verdict. Below it the
network has not learnt what tells the classes apart, so a sample set that draws the wrong shapes need not
move in its features; the disturbance battery (tests/test_judge.py) was passed by networks above it."""
DINOV2_MODEL = "vit_large_patch14_dinov2.lvd142m"
DINOV2_IMAGE_SIZE = 224
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class JudgeNet(nn.Module):
    """Standardised input, four convolution stages (GroupNorm, SiLU), a linear head on the last. ``features``:
    each stage's activations averaged over the image, concatenated ``(B, sum(widths))``."""

    def __init__(self, in_channels: int, num_classes: int, mean: torch.Tensor, std: torch.Tensor,
                 widths: tuple[int, ...] = (16, 32, 64, 64), side: int | None = None):
        super().__init__()
        self.side = side
        """The image side it was trained at: other sides are resized to it first (None: taken as they are)."""
        self.register_buffer("mean", mean.reshape(1, -1, 1, 1).float())
        self.register_buffer("std", std.reshape(1, -1, 1, 1).float().clamp_min(1e-3))
        stages, previous = [], in_channels
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(nn.Conv2d(previous, width, 3, stride, 1), nn.GroupNorm(8, width), nn.SiLU(),
                                        nn.Conv2d(width, width, 3, 1, 1), nn.GroupNorm(8, width), nn.SiLU()))
            previous = width
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(widths[-1], num_classes)

    def _stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.side is not None and x.shape[-2:] != (self.side, self.side):
            x = F.interpolate(x, size=(self.side, self.side), mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x.mean(dim=(2, 3)))
        return outputs

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self._stages(x), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self._stages(x)[-1])

    def logits_of(self, features: torch.Tensor) -> torch.Tensor:
        """The head on features already computed (the last stage's share of them)."""
        return self.head(features[:, -self.head.in_features:])


def augment(images: torch.Tensor, generator: torch.Generator, turns: bool) -> torch.Tensor:
    """Label-safe augmentation of a batch ``(B, C, H, W)``: a random shift of up to 1/8 of the side (edges
    reflected); with ``turns``, also random 90° rotations and mirror images (right for the built-in objects,
    drawn at any angle and each symmetric about an axis; not for digits)."""
    side = images.shape[-1]
    pad = max(side // 8, 1)
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
    out = padded[..., dy:dy + images.shape[-2], dx:dx + side]
    if turns:
        k, flip = torch.randint(0, 4, (1,), generator=generator).item(), torch.rand(1, generator=generator).item()
        out = torch.rot90(out, k, dims=(-2, -1))
        out = out.flip(-1) if flip < 0.5 else out
    return out


@dataclass
class ClassifierTraining:
    """How the judge's classifier is trained."""

    steps: int = 2000
    batch_size: int = 128
    lr: float = 2e-3
    turns: bool = False
    """Augment with 90° rotations and mirror images (label-safe for ``objects`` only)."""
    validate_every: int = 100
    patience: int = 5
    """Early stopping: validations without a better accuracy on the stopping split before training ends."""
    seed: int = 0


@torch.no_grad()
def classifier_accuracy(model: JudgeNet, images: torch.Tensor, labels: torch.Tensor) -> float:
    device = model.mean.device
    predicted = torch.cat([model(images[i:i + 256].to(device)).argmax(1) for i in range(0, len(images), 256)])
    return (predicted.cpu() == labels.cpu()).float().mean().item()


def train_judge(images: torch.Tensor, labels: torch.Tensor, num_classes: int, settings: ClassifierTraining,
                stopping: tuple[torch.Tensor, torch.Tensor] | None = None, device="cpu",
                side: int | None = None) -> JudgeNet:
    """A ``JudgeNet`` trained on ``device`` on ``images`` ``(N, C, H, W)`` in [-1, 1] and ``labels`` ``(N,)``
    (kept where they are; each batch is moved); with ``stopping`` (images, labels of a split of its own), the
    weights of its best accuracy there, training stopped after ``patience`` validations without improvement.
    Returned in eval mode; the global random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = JudgeNet(images.shape[1], num_classes, images.mean(dim=(0, 2, 3)), images.std(dim=(0, 2, 3)),
                         side=side).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings.lr, total_steps=settings.steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(settings.seed)
    best, best_state, waited = -1.0, None, 0
    for step in range(1, settings.steps + 1):
        rows = torch.randint(0, len(images), (settings.batch_size,), generator=generator)
        batch = augment(images[rows], generator, settings.turns).to(device)
        loss = F.cross_entropy(model(batch), labels[rows].to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if stopping is not None and (step % settings.validate_every == 0 or step == settings.steps):
            model.eval()
            accuracy = classifier_accuracy(model, *stopping)
            model.train()
            if accuracy > best:
                best, best_state, waited = accuracy, copy.deepcopy(model.state_dict()), 0
            else:
                waited += 1
                if waited >= settings.patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval()


@torch.no_grad()
def classifier_features(model: JudgeNet, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([model.features(images[i:i + 256]) for i in range(0, len(images), 256)])


class DinoV2Features:
    """FD_DINOv2's feature map: images in [-1, 1] → DINOv2's class token ``(B, 1024)`` (ViT-L/14)."""

    def __init__(self, model_name: str = DINOV2_MODEL, pretrained: bool = True, device="cpu"):
        import timm

        try:
            self.model = timm.create_model(model_name, pretrained=pretrained, num_classes=0,
                                           img_size=DINOV2_IMAGE_SIZE).eval().to(device)
        except (OSError, RuntimeError, ValueError) as err:
            reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise WeightsUnavailable(
                f"FD_DINOv2 needs timm's {model_name} weights, which could not be downloaded ({reason}). They go "
                "into the Hugging Face cache (HF_HOME) on first use: on a machine without internet, copy that "
                "cache from one that has it") from None
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        out = []
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(self.mean.device).float()
            x = F.interpolate(x, size=(DINOV2_IMAGE_SIZE,) * 2, mode="bicubic", align_corners=False)
            x = ((x.clamp(-1, 1) + 1) / 2 - self.mean) / self.std
            out.append(self.model(x).double().cpu())
        return torch.cat(out)


def _try(make, what: str):
    """``make()``, or None and the reason when its weights are unavailable."""
    try:
        return make(), None
    except WeightsUnavailable as err:
        log.info("diffusability: %s unavailable: %s", what, err)
        return None, str(err)


def _inception():
    """FID's feature map: images in [-1, 1] → the 2,048 pool features of torch-fidelity's Inception-v3, fed as
    torchmetrics' FID feeds it (bytes); raises ``WeightsUnavailable`` when its weights cannot be had."""
    from vaekit.metrics.image import inception_for_fid

    network = inception_for_fid().inception

    @torch.no_grad()
    def extract(images: torch.Tensor, device) -> torch.Tensor:
        network.to(device)
        return torch.cat([network(((images[i:i + 64].clamp(-1, 1) + 1) / 2 * 255).byte().to(device)).double().cpu()
                          for i in range(0, len(images), 64)])

    return extract


@dataclass
class Classifier:
    """The judge's trained classifier and what it is worth on images it never saw."""

    model: JudgeNet
    held_out_accuracy: float
    num_classes: int
    trained_on: str

    @property
    def refusal(self) -> str | None:
        """Why its feature space may not decide a verdict, or None."""
        if self.held_out_accuracy >= ACCURACY_BAR:
            return None
        return (f"the judge's classifier reached {self.held_out_accuracy:.3f} held-out accuracy, below the bar of "
                f"{ACCURACY_BAR} (chance {1 / self.num_classes:.2f}): its features cannot be trusted to see what "
                "generation gets wrong")

    def describe(self) -> str:
        return (f"judge: a classifier of {self.num_classes} classes trained on {self.trained_on}; held-out accuracy "
                f"{self.held_out_accuracy:.3f} (chance {1 / self.num_classes:.2f}, bar {ACCURACY_BAR})")


class Judge:
    """The arbiter's feature spaces for one comparison, fixed before any autoencoder is measured: DINOv2's
    and Inception's where their weights can be had, the classifier's for labelled data. ``reference``: the
    held-out real images ``(N, C, H, W)`` in [-1, 1] every sample set is scored against; ``floor_images``:
    other real images, disjoint from them, whose scores are the real-vs-real floor."""

    def __init__(self, reference: torch.Tensor, floor_images: torch.Tensor, classifier: Classifier | None,
                 device="cpu", dinov2: DinoV2Features | None = None, inception=None,
                 unavailable: dict[str, str] | None = None):
        self.reference, self.classifier, self.device = reference, classifier, device
        self.dinov2, self.inception = dinov2, inception
        self.unavailable = unavailable or {}
        self.sample_size = len(floor_images)
        """How many samples are scored: the floor's size, since a Fréchet distance depends on it."""
        self._reference = {space: extract(reference) for space, extract in self._spaces().items()}
        self.floor = {f"floor_{key}": value for key, value in self._distances(floor_images).items()}

    @classmethod
    def load(cls, reference: torch.Tensor, floor_images: torch.Tensor, classifier: Classifier | None,
             device="cpu", dinov2_model: str | None = DINOV2_MODEL) -> "Judge":
        """A judge with DINOv2 and Inception where their weights load (downloaded on first use), the
        reasons where they do not; ``dinov2_model`` None leaves DINOv2 out."""
        unavailable = {}
        dinov2 = inception = None
        if dinov2_model:
            dinov2, unavailable["FD_DINOv2"] = _try(lambda: DinoV2Features(dinov2_model, device=device), "FD_DINOv2")
        inception, unavailable["FID"] = _try(_inception, "FID")
        return cls(reference, floor_images, classifier, device, dinov2, inception,
                   {name: why for name, why in unavailable.items() if why})

    @property
    def inception_reason(self) -> str | None:
        return self.unavailable.get("FID")

    def _spaces(self) -> dict:
        """Each available feature space: name → images in [-1, 1] → features ``(N, d)``."""
        spaces = {}
        if self.dinov2 is not None:
            spaces["dinov2"] = self.dinov2
        if self.inception is not None:
            spaces["inception"] = lambda images: self.inception(images, self.device)
        if self.classifier is not None:
            model = self.classifier.model
            spaces["classifier"] = lambda images: classifier_features(model, images.to(model.mean.device)).cpu()
        return spaces

    def _distances(self, images: torch.Tensor, features: dict | None = None) -> dict[str, float]:
        features = features or {space: extract(images) for space, extract in self._spaces().items()}
        names = {"dinov2": ("sample_fd_dinov2", "sample_kid_dinov2"), "inception": ("sample_fid", "sample_kid"),
                 "classifier": ("sample_classifier_fd", "sample_classifier_kid")}
        out = {}
        for space, f in features.items():
            fd_name, kid_name = names[space]
            out[fd_name] = frechet_distance(f, self._reference[space])
            out[kid_name] = kernel_distance(f, self._reference[space])
        return out

    def frechet(self, images: torch.Tensor) -> float | None:
        """The FD of ``images`` in the preferred feature space (DINOv2, Inception, the classifier's), or None."""
        for space, extract in self._spaces().items():
            return frechet_distance(extract(images), self._reference[space])
        return None

    def scores(self, samples: torch.Tensor, labels: torch.Tensor | None) -> dict:
        """The arbiter's scores of one denoiser's decoded samples (None where a feature space is missing):
        FD and KID in each space, precision and recall in the first, class accuracy for conditional samples;
        the first ``sample_size`` samples are scored, as many as the real-vs-real floor compares."""
        out = dict.fromkeys(SCORE_NAMES)
        samples = samples[:self.sample_size]
        labels = None if labels is None else labels[:self.sample_size]
        features = {space: extract(samples) for space, extract in self._spaces().items()}
        out.update(self._distances(samples, features))
        if features:
            space = next(iter(features))
            pr = precision_recall(self._reference[space].float(), features[space].float())
            out.update(sample_precision=pr["precision"], sample_recall=pr["recall"])
        if labels is not None and self.classifier is not None:
            with torch.no_grad():
                logits = self.classifier.model.logits_of(features["classifier"].to(self.classifier.model.mean.device))
            out["sample_class_accuracy"] = (logits.argmax(1).cpu() == labels.cpu()).float().mean().item()
        return out

    def refused(self) -> dict[str, str]:
        """Arbiter scores that may not decide a verdict, with why."""
        refusal = self.classifier.refusal if self.classifier is not None else None
        return {"sample_classifier_fd": refusal} if refusal else {}

    def describe(self) -> list[str]:
        """What judged, one line each: the classifier's accuracy, and the pretrained judges' availability."""
        lines = [self.classifier.describe()] if self.classifier is not None else []
        for name, present in (("FD_DINOv2", self.dinov2), ("FID", self.inception)):
            why = self.unavailable.get(name, "not asked for")
            lines.append(f"judge: {name} " + ("available" if present is not None else f"unavailable: {why}"))
        return lines


SCORE_NAMES = ("sample_fd_dinov2", "sample_kid_dinov2", "sample_fid", "sample_kid", "sample_classifier_fd",
               "sample_classifier_kid", "sample_precision", "sample_recall")

OBJECTS_STREAM = 3
"""The ``objects`` stream the judge trains on: apart from training (0), test (1) and the report's images (2)."""
OBJECTS_IMAGES = 10_000
OBJECTS_TRAINING = ClassifierTraining(steps=1000, turns=True)
"""On 10,000 fresh 32² objects, 1,000 steps reach 0.97 held-out accuracy (500 steps on 5,000 reach 0.74 and
leave the features blind to noise of σ 0.05; 1,500 on 20,000 reach 0.98); about 80 s on 2 CPU cores, once
per machine and size."""
FOLDER_TRAINING = ClassifierTraining(steps=3000)
STOPPING_FRACTION = 0.1
"""The share of a labelled folder's training images kept aside for early stopping."""


def cache_dir() -> Path:
    """Where trained judges are kept: ``VAEKIT_CACHE``, else ``$XDG_CACHE_HOME/vaekit`` (``~/.cache/vaekit``)."""
    if os.environ.get("VAEKIT_CACHE"):
        return Path(os.environ["VAEKIT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vaekit"


def _to_model_range(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).float() / 127.5 - 1


OBJECTS_MAX_SIDE = 64
"""The objects judge trains at the comparison's resolution up to this side (objects are drawn for 32² and
64²; at 128² the 10,000 training images would take 2 GB as floats and 16× the time), and resizes larger
images to it."""


def objects_judge(resolution: int, device="cpu") -> JudgeNet:
    """The classifier of the built-in ``objects`` at ``resolution`` (at most ``OBJECTS_MAX_SIDE``), trained on
    ``device`` on ``OBJECTS_IMAGES`` images of their own stream: a function of the side alone, so it is kept in
    ``cache_dir()`` and reused."""
    from safetensors.torch import load_file, save_file

    from vaekit.data.objects import CLASS_NAMES, make_objects

    side = min(resolution, OBJECTS_MAX_SIDE)
    folder = cache_dir() / "judges" / f"objects-{side}px-{OBJECTS_IMAGES}x{OBJECTS_TRAINING.steps}-v1"
    if (folder / "model.safetensors").is_file():
        model = JudgeNet(3, len(CLASS_NAMES), torch.zeros(3), torch.ones(3), side=side)
        model.load_state_dict(load_file(folder / "model.safetensors"))
        return model.eval().to(device)
    log.info("diffusability: training the judge's classifier on %d fresh objects at %d² (once per machine)",
             OBJECTS_IMAGES, side)
    images, labels = make_objects(OBJECTS_IMAGES, side, seed=0, stream=OBJECTS_STREAM)
    model = train_judge(_to_model_range(images), torch.from_numpy(labels), len(CLASS_NAMES), OBJECTS_TRAINING,
                        device=device, side=side)
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / "model.safetensors.tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(temporary))
    temporary.replace(folder / "model.safetensors")
    return model


def in_class_order(model: JudgeNet, names: list[str], order: list[str]) -> JudgeNet:
    """``model``, whose head's classes are ``names``, with its head's rows put in ``order`` (a folder's class
    names, sorted as its labels are), so its predictions are the folder's labels."""
    missing = sorted(set(order) - set(names))
    if missing:
        raise ValueError(f"the judge knows no class {', '.join(missing)}")
    rows = torch.tensor([names.index(name) for name in order], device=model.head.weight.device)
    with torch.no_grad():
        head = nn.Linear(model.head.in_features, len(order)).to(model.head.weight.device)
        head.weight.copy_(model.head.weight[rows])
        head.bias.copy_(model.head.bias[rows])
    model.head = head
    return model


def folder_judge(images: torch.Tensor, labels: torch.Tensor, num_classes: int, device="cpu") -> JudgeNet:
    """A classifier of a labelled folder's ``images`` (never the held-out ones), early-stopped on a seeded
    ``STOPPING_FRACTION`` of them; shifts are its only augmentation (a mirror image can change a class)."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    cut = max(1, int(round(len(images) * STOPPING_FRACTION)))
    stop, train = order[:cut], order[cut:]
    return train_judge(images[train], labels[train], num_classes, FOLDER_TRAINING, (images[stop], labels[stop]),
                       device=device)

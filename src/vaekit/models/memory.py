"""How much memory a model's activations take, computed from the operations it runs — no GPU needed.

Two estimates, both per image and both run on the ``meta`` device (shapes and dtypes only: no
arithmetic, no memory, about a second for Stable Diffusion's VAE at any size):

- **inference** (``inference_bytes``): the peak of the tensors alive at once while ``fn`` runs without
  gradients — every operation's output counted from when it is made until its last reference goes, views
  sharing their base's bytes. It is what the CUDA allocator must hold on top of the weights; cuDNN's
  workspaces and the allocator's rounding come on top (``training.memory`` leaves headroom for them).
- **training** (``saved_activation_bytes``): the bytes of the distinct tensors autograd keeps for the
  backward pass of one training forward pass, parameters left out (they are counted once, with their
  gradients and AdamW's moments, by ``training_state_bytes``).

On the meta device convolutions take the ordinary path a GPU takes; the CPU's Winograd fast path
(``models.fastconv``) allocates differently and is not what these estimate.
"""

from __future__ import annotations

import weakref
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def run_on_meta(func, args, kwargs):
    """``func(*args, **kwargs)``, with an answer for the one operator vaekit's models use that has no meta
    kernel: ``bincount`` (its size depends on the data; vaekit counts codes with ``minlength`` = the codebook
    size and indices below it, so the counts are exactly ``(minlength,)``)."""
    if func is torch.ops.aten.bincount.default and args[0].device.type == "meta":
        length = kwargs.get("minlength", args[2] if len(args) > 2 else 0)
        return torch.zeros(length, dtype=torch.int64, device="meta")
    return func(*args, **kwargs)


class MetaKernels(TorchDispatchMode):
    """Runs every operation under it through ``run_on_meta``."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return run_on_meta(func, args, kwargs or {})


class PeakMemoryTracker(TorchDispatchMode):
    """Counts the bytes of every tensor the operations under it create, and their peak (``peak``).

    Each storage is counted once: a view adds nothing, and a storage is released when the last tensor
    seen using it is garbage-collected. Tensors made before the tracker starts (weights, inputs) are not
    counted."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._storages: dict[int, list[int]] = {}  # storage id -> [bytes, tensors seen using it]

    def _release(self, key: int) -> None:
        entry = self._storages.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self._storages[key]

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        # _cdata is the storage's own address: meta storages all have data_ptr 0, so it is the only id.
        key = storage._cdata
        entry = self._storages.get(key)
        if entry is not None:
            entry[1] += 1
        else:
            self._storages[key] = [storage.nbytes(), 1]
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
        weakref.finalize(tensor, self._release, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = run_on_meta(func, args, kwargs or {})
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self._track(value)
        return out


class _Call(nn.Module):
    """Lets ``functional_call`` run any method of ``model`` (it calls ``forward`` only)."""

    def __init__(self, model: nn.Module, fn: Callable):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, *inputs):
        return self.fn(self.model, *inputs)


def _meta_state(model: nn.Module, keep_requires_grad: bool = False) -> dict[str, torch.Tensor]:
    """The model's parameters and buffers as meta tensors (same shapes and dtypes, no storage), named for
    ``_Call``; the model itself is left untouched."""
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    return {f"model.{name}": torch.empty_like(value, device="meta").requires_grad_(keep_requires_grad
                                                                                  and value.requires_grad)
            for name, value in named}


def model_dtype(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def inference_bytes(model: nn.Module, fn: Callable, input_shape: tuple[int, ...], batch: int = 1) -> int:
    """Peak bytes of the activations of ``fn(model, x)`` without gradients, for ``x`` of shape
    ``(batch, *input_shape)`` in the model's dtype; computed on the meta device."""
    x = torch.empty(batch, *input_shape, dtype=model_dtype(model), device="meta")
    state = _meta_state(model)
    with torch.no_grad(), PeakMemoryTracker() as tracker:
        functional_call(_Call(model, fn), state, (x,), strict=False, tie_weights=False)
    return tracker.peak


def reconstruct_mode(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What validation runs per batch of an image autoencoder: decode the posterior mode."""
    return model.decode(model.encode(x).mode(), size=x.shape[2:]).clamp(-1, 1)


def reconstruction_bytes_per_image(model: nn.Module, image_shape: tuple[int, int, int]) -> int:
    """Peak activation bytes of encoding one ``(C, H, W)`` image and decoding its posterior mode without
    gradients (they grow linearly with the batch: the operations are per image)."""
    return inference_bytes(model, reconstruct_mode, image_shape)


def saved_activation_bytes(model: nn.Module, x: torch.Tensor, decoder_only: bool = False,
                           parameters: set[int] | None = None) -> int:
    """Bytes of the distinct storages autograd keeps for the backward pass of one training forward pass
    ``model(x)`` (``decoder_only``: the encoder runs without gradients and only ``decode`` is recorded),
    left out those whose storage id is in ``parameters`` (default: the model's parameters'). ``x``:
    ``(B, C, H, W)``, on any device, ``meta`` included."""
    if parameters is None:
        parameters = {p.untyped_storage()._cdata for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        if storage._cdata not in parameters:
            seen[storage._cdata] = storage.nbytes()
        return tensor

    with MetaKernels():
        if decoder_only:
            with torch.no_grad():
                z = model.encode(x).sample()
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                model.decode(z)
        else:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                model(x)
    return sum(seen.values())


def training_bytes_per_image(model: nn.Module, image_shape: tuple[int, int, int], decoder_only: bool = False) -> int:
    """``saved_activation_bytes`` of one ``(C, H, W)`` image in training mode, computed on the meta device
    (whatever the model's size, it costs no memory); ``model``'s own mode is left as it was."""
    state = _meta_state(model, keep_requires_grad=True)
    parameters = {t.untyped_storage()._cdata for t in state.values()}
    x = torch.empty(1, *image_shape, dtype=model_dtype(model), device="meta")
    was_training = model.training
    model.train()
    try:
        return functional_call(_Call(model, lambda m, x: saved_activation_bytes(m, x, decoder_only, parameters)),
                               state, (x,), strict=False, tie_weights=False)
    finally:
        model.train(was_training)


def training_state_bytes(model: nn.Module, trained: list[nn.Parameter], ema: bool = False) -> int:
    """Bytes of the weights, the gradients and AdamW's two moments of the ``trained`` parameters, and an
    EMA copy of the weights when ``ema``."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return weights * (2 if ema else 1) + sum(p.numel() * p.element_size() for p in trained) * 3

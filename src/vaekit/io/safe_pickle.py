"""The tensors of a pickled checkpoint whose other objects ``torch.load(weights_only=True)`` refuses,
without executing anything from the file.

Published LDM/Stable Diffusion ``.ckpt`` files are PyTorch Lightning checkpoints: beside ``state_dict``
they pickle training callbacks and loggers, whose classes ``weights_only`` does not allow. This unpickler
imports only tensor-rebuilding functions and plain containers. Any other class the file names becomes an
inert placeholder when the file merely *creates an instance* of it (pickle's NEWOBJ, how plain objects
such as callbacks are stored: no constructor runs); the placeholders are dropped afterwards. A file that
*calls* anything else while loading (pickle's REDUCE on an unknown global: how ``__reduce__`` runs code)
is refused whole: nothing of it is returned and nothing was run.
"""

from __future__ import annotations

import collections
import pathlib
import pickle
import types

import torch

from vaekit.errors import VaekitError

_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    # paths (a checkpoint's directories) are rebuilt by calling their class, which only parses the string
    ("pathlib", "PosixPath"): pathlib.PurePosixPath,
    ("pathlib", "WindowsPath"): pathlib.PureWindowsPath,
    ("pathlib", "PurePosixPath"): pathlib.PurePosixPath,
    ("pathlib", "PureWindowsPath"): pathlib.PureWindowsPath,
}
_ALLOWED.update({("torch", str(dtype).removeprefix("torch.")): dtype
                 for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
                               torch.int16, torch.int8, torch.uint8, torch.bool)})


class RefusedCall(pickle.UnpicklingError):
    """The file calls a function or class vaekit does not allow while it is unpickled."""


class Placeholder:
    """An instance of a class the checkpoint names but vaekit does not import: it holds nothing."""

    def __init__(self, *args, **kwargs):
        # Only pickle's REDUCE calls a class (NEWOBJ uses __new__ alone): a call is refused.
        raise RefusedCall(f"{type(self).__module__}.{type(self).__qualname__}")

    def __setstate__(self, state) -> None:
        pass


def _placeholder_instance(cls, called: str):
    """An empty instance of a placeholder class; anything else being constructed is a call: refused."""
    if not (isinstance(cls, type) and issubclass(cls, Placeholder)):
        raise RefusedCall(f"{called}({cls!r})")
    return cls.__new__(cls)


def _reconstructor(cls, base, state):
    """copyreg's protocol-0/1 object constructor: an empty placeholder, never the class itself."""
    return _placeholder_instance(cls, "copyreg._reconstructor")


def _newobj(cls, *args):
    """copyreg's ``__newobj__``: the same."""
    return _placeholder_instance(cls, "copyreg.__newobj__")


class Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if (module, name) == ("copyreg", "_reconstructor"):
            return _reconstructor
        if (module, name) == ("copyreg", "__newobj__"):
            return _newobj
        return type(name, (Placeholder,), {"__module__": module, "__qualname__": name})


# what torch.load takes as ``pickle_module``
pickle_module = types.SimpleNamespace(Unpickler=Unpickler, load=lambda f, **kw: Unpickler(f, **kw).load(),
                                      __name__="vaekit.io.safe_pickle")


def _without_placeholders(value):
    if isinstance(value, dict):
        return type(value)((k, _without_placeholders(v)) for k, v in value.items() if not isinstance(v, Placeholder))
    if isinstance(value, (list, tuple)):
        return type(value)(_without_placeholders(v) for v in value if not isinstance(v, Placeholder))
    return value


def load_tensors_only(path) -> object:
    """What ``torch.load`` would give for ``path``, with objects of unknown classes dropped; a VaekitError
    when the file calls anything but tensor rebuilding while loading (then nothing was executed)."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=False, pickle_module=pickle_module)
    except RefusedCall as err:
        raise VaekitError(f"{path} calls {err} while it is unpickled, which could run code: refused, nothing was "
                          "loaded or run. Convert it to .safetensors where you trust it, or use a .safetensors "
                          "release of the weights") from None
    return _without_placeholders(loaded)

"""Name -> class registries for models, datasets and losses (timm's idea).

Configs name things by these names, never by import path. A model registry also holds presets:
a preset is a registered model plus config values, e.g. ``beta-vae`` = ``mlp-vae`` with β = 4.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from vaekit.errors import ConfigError


@dataclass(frozen=True)
class Entry:
    name: str
    obj: Any
    config_cls: type | None
    defaults: dict[str, Any] = field(default_factory=dict)


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, config_cls: type | None = None) -> Callable[[Any], Any]:
        def decorator(obj: Any) -> Any:
            self._add(Entry(name, obj, config_cls))
            obj.registry_name = name  # so a saved object records the name it is loaded back by
            return obj

        return decorator

    def register_preset(self, name: str, base: str, **defaults: Any) -> None:
        entry = self.get(base)
        self._add(Entry(name, entry.obj, entry.config_cls, {**entry.defaults, **defaults}))

    def _add(self, entry: Entry) -> None:
        if entry.name in self._entries:
            raise ValueError(f"{self.kind} {entry.name!r} is registered twice")
        self._entries[entry.name] = entry

    def get(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries


MODELS = Registry("model")
DATASETS = Registry("dataset")
LOSSES = Registry("loss")

"""Engines of one vendor role by name, found without editing the service that uses them (stt, tts and media
use it; one registry per role).

Two sources, searched on the first lookup:

- the modules of the role's engines package (e.g. ``voice_stt.engines``): each is imported once and registers
  its engines at import (``ENGINES.register("whisper", create)``). A new engine is a new file there; modules
  whose name starts with ``_`` are helpers and are not imported. A module that fails to import (its optional
  dependency is missing) is reported when its engine is asked for, and does not hide the others.
- installed distributions: an entry point in the role's group (e.g. ``voice.stt_engines``) named after the
  engine, pointing at the factory (``echo = "my_pkg.echo:create"``) or at a module that registers itself.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
from types import ModuleType
from typing import Generic, TypeVar

from voice_runtime.logging import get_logger, safe_error

log = get_logger(__name__)

T = TypeVar("T")


class UnknownEngine(LookupError):
    """No engine of that name, or its module could not be imported; the message names what there is."""


class Registry(Generic[T]):
    """Factories of one role's engines by name."""

    def __init__(self, role: str, package: str, group: str) -> None:
        self.role, self.package, self.group = role, package, group
        self._engines: dict[str, T] = {}
        self._broken: dict[str, str] = {}  # module -> why it did not import
        self._discovered = False

    def register(self, name: str, factory: T) -> T:
        if self._engines.get(name, factory) is not factory:
            raise ValueError(f"two {self.role} engines named {name!r}")
        self._engines[name] = factory
        return factory

    def discover(self) -> None:
        """Import every engine module of the package (once)."""
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(package.__path__, f"{self.package}."):
            if module.name.rpartition(".")[2].startswith("_"):
                continue
            try:
                importlib.import_module(module.name)
            except ImportError as e:
                self._broken[module.name] = safe_error(e, 300)
                log.warning("engine_module_unavailable", role=self.role, module=module.name, error=safe_error(e, 300))

    def _from_entry_points(self, name: str) -> None:
        for ep in importlib.metadata.entry_points(group=self.group, name=name):
            loaded = ep.load()
            if name not in self._engines and not isinstance(loaded, ModuleType):
                self.register(name, loaded)

    def get(self, name: str) -> T:
        self.discover()
        if name not in self._engines:
            self._from_entry_points(name)
        factory = self._engines.get(name)
        if factory is None:
            broken = f"; modules that did not import: {self._broken}" if self._broken else ""
            raise UnknownEngine(f"no {self.role} engine {name!r}: there are {self.names()}{broken}")
        return factory

    def names(self) -> list[str]:
        self.discover()
        installed = {ep.name for ep in importlib.metadata.entry_points(group=self.group)}
        return sorted(set(self._engines) | installed)

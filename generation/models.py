"""Several configured models, loaded when first asked for and kept up to ``max_loaded_models`` (least recently used
is unloaded first).

Why lazily and on the worker thread: loading a model takes seconds to minutes and GPU memory; a bot configured with
five models should not hold five in memory, nor fail to start because a rarely used one is broken. A model that
cannot load fails only the jobs that asked for it (the engine turns :class:`ModelLoadError` into a sentence for the
member); the failure is remembered for ``retry_after`` seconds so a queue of such jobs does not retry the load each.

Thread safety: :meth:`ModelRegistry.get` may be called from any thread; loads are serialised by one lock, and the
bookkeeping (which is loaded, LRU order) by another that is never held while loading, so the event loop can ask
:meth:`loaded_names` without waiting for a load.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import torch

from generation.loading import LoadedModel, ModelLoadError, load_model, resolve_device, tiny_fallback
from generation.settings import GenerationSettings

log = logging.getLogger(__name__)

Loader = Callable[[str, GenerationSettings, str], LoadedModel]  # (source, settings, name) -> loaded


def _default_loader(source: str, settings: GenerationSettings, name: str) -> LoadedModel:
    return load_model(source, settings, name=name)


class ModelRegistry:
    """Model name -> loaded pipeline, lazily, LRU-bounded (see the module docstring)."""

    def __init__(self, settings: GenerationSettings, *, preloaded: LoadedModel | None = None,
                 loader: Loader = _default_loader, retry_after: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``preloaded``: the default model, already loaded (e.g. at start-up, possibly the tiny fallback)."""
        self.settings = settings
        self.sources = settings.model_sources()
        self.default_name = settings.default_model_name
        self.max_loaded = settings.max_loaded_models
        self._loader = loader
        self._retry_after = retry_after
        self._clock = clock
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()  # least recently used first
        self._failed: dict[str, tuple[float, ModelLoadError]] = {}
        self._state_lock = threading.Lock()
        self._load_lock = threading.Lock()
        if preloaded is not None:
            self._loaded[self.default_name] = preloaded

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.sources)

    @property
    def device(self) -> torch.device:
        with self._state_lock:
            loaded = next(iter(self._loaded.values()), None)
        return loaded.device if loaded is not None else resolve_device(self.settings.device)

    def resolve(self, name: str) -> str:
        """``""`` means the default model; other names are returned as they are (known or not)."""
        return name or self.default_name

    def loaded_names(self) -> list[str]:
        """Names of the models in memory, least recently used first."""
        with self._state_lock:
            return list(self._loaded)

    def peek(self, name: str) -> LoadedModel | None:
        """The model if it is loaded (without loading it or counting as a use)."""
        with self._state_lock:
            return self._loaded.get(self.resolve(name))

    def get(self, name: str) -> LoadedModel:
        """The loaded model ``name`` (loading it, and unloading the least recently used one, if needed).

        Raises :class:`ModelLoadError` when the name is not configured or the model cannot be loaded.
        """
        name = self.resolve(name)
        with self._state_lock:
            loaded = self._loaded.get(name)
            if loaded is not None:
                self._loaded.move_to_end(name)
                return loaded
        if name not in self.sources:
            raise ModelLoadError(f"no model named {name!r} is configured (generation.models has: "
                                 f"{', '.join(self.sources)}).")
        with self._load_lock:
            with self._state_lock:  # loaded by another thread while this one waited
                loaded = self._loaded.get(name)
                if loaded is not None:
                    self._loaded.move_to_end(name)
                    return loaded
                failed = self._failed.get(name)
            if failed is not None and self._clock() - failed[0] < self._retry_after:
                raise failed[1]
            self._make_room()
            loaded = self._load(name)
            with self._state_lock:
                self._loaded[name] = loaded
                self._failed.pop(name, None)
            return loaded

    def unload(self, name: str) -> bool:
        """Drop a model from memory (it loads again when next asked for); False if it was not loaded."""
        with self._state_lock:
            loaded = self._loaded.pop(self.resolve(name), None)
        if loaded is None:
            return False
        log.info("unloaded model %s", name)
        del loaded
        self._free_memory()
        return True

    def _load(self, name: str) -> LoadedModel:
        source = self.sources[name]
        try:
            return self._loader(source, self.settings, name)
        except Exception as exc:
            error = exc if isinstance(exc, ModelLoadError) else ModelLoadError(
                f"could not load model {name!r} from {source!r} ({type(exc).__name__}: {str(exc)[:300]}).")
            if name == self.default_name and self.settings.fallback_to_tiny and source != "tiny":
                return tiny_fallback(source, error, self.settings)
            log.error("model %s could not be loaded: %s", name, error)
            with self._state_lock:
                self._failed[name] = (self._clock(), error)
            if error is exc:
                raise
            raise error from exc

    def _make_room(self) -> None:
        """Unload least recently used models until one more fits (before loading: GPU memory is the limit)."""
        while True:
            with self._state_lock:
                if len(self._loaded) < self.max_loaded:
                    return
                name, loaded = self._loaded.popitem(last=False)
            log.info("unloading model %s (least recently used; max_loaded_models=%d)", name, self.max_loaded)
            del loaded
            self._free_memory()

    @staticmethod
    def _free_memory() -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

"""The API process's one LRU cache of loaded models (and of other artifacts used with them, such as
transcoders), for interactive forward passes (playground, live ablation, steering, feature pages). A
model's entry also keeps its mean activations and the tasks tokenised for it, so that a warm request is
one or two forward passes."""

from __future__ import annotations

import random
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
from fastapi import Request
from tokenizers import Tokenizer

from worker.engine.ablation import MEANS, Ablation, AblationMode, load_or_compute_means, load_or_make_windows
from worker.engine.checkpoints import load_model, load_tokenizer
from worker.engine.config import RunConfig
from worker.engine.masks import EdgeMasks
from worker.engine.model import SparseGPT
from worker.engine.tasks import TaskData

TASKS_PER_MODEL = 8
T = TypeVar("T")


class Lru(OrderedDict):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def put(self, key, value) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)

    def hit(self, key):
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value


@dataclass
class LoadedModel:
    model_id: int
    folder: Path
    model: SparseGPT
    tok: Tokenizer
    run: RunConfig
    lock: threading.Lock = field(default_factory=threading.Lock)
    _means: dict[str, torch.Tensor] | None = None
    _means_stamp: float | None = None
    _windows: torch.Tensor | None = None
    _edge_masks: EdgeMasks | None = None
    _tasks: Lru = field(default_factory=lambda: Lru(TASKS_PER_MODEL))
    _memo: Lru = field(default_factory=lambda: Lru(4 * TASKS_PER_MODEL))

    def means(self) -> dict[str, torch.Tensor]:
        """Mean activations (a profile job rewrites the file: reloaded when it changes)."""
        with self.lock:
            path = self.folder / MEANS
            stamp = path.stat().st_mtime if path.is_file() else None
            if self._means is None or stamp != self._means_stamp:
                self._means = load_or_compute_means(self.folder, self.model, self.tok, self.run)
                self._means_stamp = path.stat().st_mtime if path.is_file() else None
            return self._means

    def ablation(self, mode: AblationMode) -> Ablation:
        """The model's Ablation of one mode (resample: its pretraining windows, loaded once, drawn from
        afresh by every request)."""
        means = self.means()
        if mode == "resample":
            with self.lock:
                if self._windows is None:
                    self._windows = load_or_make_windows(self.folder, self.model, self.tok, self.run)
        return Ablation(mode, means, self._windows, random.randrange(2**31))

    def edge_masks(self) -> EdgeMasks:
        """The model's candidate edges (what edge circuits are masks on), found once."""
        with self.lock:
            if self._edge_masks is None:
                self._edge_masks = EdgeMasks(self.model, 0.0, 0.0, torch.Generator())
            return self._edge_masks

    def task(self, key: str, build: Callable[[Tokenizer], TaskData]) -> TaskData:
        """A task tokenised for this model, built once (built-in tasks scan the corpus: seconds)."""
        with self.lock:
            data = self._tasks.hit(key)
        if data is None:
            data = build(self.tok)
            with self.lock:
                self._tasks.put(key, data)
        return data

    def memo(self, key, compute: Callable[[], object]):
        """A small per-model LRU for derived results (e.g. the unablated model's task logits)."""
        with self.lock:
            value = self._memo.hit(key)
        if value is None:
            value = compute()
            with self.lock:
                self._memo.put(key, value)
        return value


class ModelCache:
    """Thread-safe LRU of LoadedModel by (model id, folder), and beside it of other artifacts loaded
    from disk for interactive requests (a transcoder folder's coders, ...); each loads once even if
    requested concurrently."""

    def __init__(self, size: int):
        self.size = size
        self._entries = Lru(size)
        self._artifacts = Lru(2 * size)
        self._tokenizers = Lru(4 * size)
        self._loading: dict[object, threading.Lock] = {}
        self._lock = threading.Lock()

    def _once(self, entries: Lru, key, load: Callable[[], T]) -> T:
        with self._lock:
            entry = entries.hit(key)
            if entry is not None:
                return entry
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._lock:
                entry = entries.hit(key)
            if entry is None:
                entry = load()
                with self._lock:
                    entries.put(key, entry)
                    self._loading.pop(key, None)
        return entry

    def get(self, model_id: int, folder: Path) -> LoadedModel:
        def load() -> LoadedModel:
            model, tok, run = load_model(folder)
            model.requires_grad_(False)
            return LoadedModel(model_id, Path(folder), model, tok, run)

        return self._once(self._entries, (model_id, str(folder)), load)

    def artifact(self, key: tuple, load: Callable[[], T]) -> T:
        """Another artifact by key, e.g. ("transcoders", row id); `load` may raise (nothing is kept)."""
        return self._once(self._artifacts, ("artifact", *key), load)

    def tokenizer(self, model_id: int, folder: Path) -> Tokenizer:
        """A model's tokenizer alone (decoding examples does not need the weights)."""
        key = (model_id, str(folder))
        with self._lock:
            entry = self._entries.hit(key)
            tok = entry.tok if entry is not None else self._tokenizers.hit(key)
        if tok is None:
            tok = load_tokenizer(folder)
            with self._lock:
                self._tokenizers.put(key, tok)
        return tok

    def __len__(self) -> int:
        return len(self._entries)


_create = threading.Lock()


def get_model_cache(request: Request) -> ModelCache:
    """The app's cache (created on first use, sized by CIRCUITS_MODEL_CACHE_SIZE)."""
    state = request.app.state
    cache = getattr(state, "model_cache", None)
    if cache is None:
        with _create:
            cache = getattr(state, "model_cache", None)
            if cache is None:
                cache = state.model_cache = ModelCache(state.settings.model_cache_size)
    return cache

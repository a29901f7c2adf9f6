"""What `serve` loads once per process: the run's decomposition, its tokenizer, the graph's two ends and the
component panels. Everything the server computes afterwards reads only this (and writes only under RUN/serve/).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from tokenizers import Tokenizer

from spd.attributions.endpoints import find_embedding_module, find_unembedding_module, vocab_size_of
from spd.data.tokenizer import load_tokenizer
from spd.models import decomposition_tokenizer_path, load_decomposition
from spd.models.checkpoint import CONFIG_FILE
from spd.models.component_model import ComponentModel
from spd.report.harvest_data import display_token
from spd.report.locate import RunRecord
from spd.serve.panels import Panels, load_panels

SERVE_DIR = "serve"  # RUN/serve/: the server's own files (panel cache, server.json)
DEFAULT_CI_THRESHOLD = 0.1  # when the run has no harvest to take its threshold from
T = TypeVar("T")


class ModelThread:
    """The one thread every torch call of the server runs on, one call at a time.

    The forward hooks live on the shared model, so calls must not overlap; and torch's OpenMP threads belong to the
    thread that calls it: request threads from a pool would each start their own team and compete for the cores
    (measured on 2 cores, a 64-token graph on the quickstart: 0.55 s on one thread, 0.8-1.1 s once two threads
    have run torch)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spd-serve-model")

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        return self._pool.submit(fn, *args).result()


@dataclass
class ServedRun:
    """A run opened for serving; `call` runs a function on its model thread (every view goes through it)."""

    run_dir: Path
    run_id: str
    decomposition_dir: Path
    model: ComponentModel
    tokenizer: Tokenizer
    embedding_module: str
    unembedding_module: str
    panels: Panels
    device: str
    thread: ModelThread

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        return self.thread.call(fn, *args)

    @property
    def serve_dir(self) -> Path:
        return self.run_dir / SERVE_DIR

    @property
    def modules(self) -> list[str]:
        """Decomposed modules in the order the model stores them (the graph uses the forward order)."""
        return list(self.model.target_module_paths)

    @property
    def max_tokens(self) -> int | None:
        """The decomposition's window length: longer prompts are refused (positions it was never trained on)."""
        seq_len = self.model.run_config.get("data", {}).get("seq_len")
        return int(seq_len) if seq_len else None

    @property
    def ci_threshold(self) -> float:
        threshold = self.panels.meta.get("ci_threshold")
        return float(threshold) if threshold is not None else DEFAULT_CI_THRESHOLD

    @cached_property
    def vocab_size(self) -> int:
        return vocab_size_of(self.model.target_model, self.embedding_module)

    def token_text(self, token_id: int) -> str:
        """A token's display text (control characters as symbols; spaces kept: the page shows them)."""
        return display_token(self.tokenizer.decode([token_id], skip_special_tokens=False))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def info(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "run_dir": str(self.run_dir),
            "decomposition": str(self.decomposition_dir),
            "device": self.device,
            "modules": {m: self.model.module_to_c[m] for m in self.modules},
            "vocab_size": self.vocab_size,
            "max_tokens": self.max_tokens,
            "ci_threshold": self.ci_threshold,
            "panel_meta": self.panels.meta,
            "n_panels": len(self.panels.details),
        }


def open_served_run(run_dir: Path, status: dict[str, Any], device: str = "cpu", log=print) -> ServedRun:
    """Load the run's decomposition (read-only) and its panels, on a new model thread; ValueError when there is
    nothing to serve."""
    thread = ModelThread()
    return thread.call(_open, Path(run_dir), status, device, log, thread)


def _open(run_dir: Path, status: dict[str, Any], device: str, log, thread: ModelThread) -> ServedRun:
    run_dir = Path(run_dir).resolve()
    decomposition = RunRecord.from_status(status).out_dir("decompose")
    if decomposition is None or not (decomposition / CONFIG_FILE).is_file():
        raise ValueError(f"{run_dir} has no finished decomposition to serve: run its decompose stage first")
    log(f"serve: loading the decomposition {decomposition} on {device}")
    model = load_decomposition(decomposition, device)
    try:
        tokenizer = load_tokenizer(decomposition_tokenizer_path(decomposition))
    except FileNotFoundError as e:
        raise ValueError(f"serve needs a language-model decomposition with a tokenizer: {e}") from None
    target = model.target_model
    embedding = find_embedding_module(target)
    unembedding = find_unembedding_module(target, vocab_size_of(target, embedding))
    panels = load_panels(run_dir, status, run_dir / SERVE_DIR, log)
    run_id = status.get("run_id") or run_dir.name
    return ServedRun(run_dir, run_id, decomposition, model, tokenizer, embedding, unembedding, panels, device, thread)

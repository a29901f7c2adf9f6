"""Real models and data: a Hugging Face causal LM and a Hugging Face dataset, as a token stream.

Needs the optional extra `hf` (`pip install 'spd-pipeline[hf]'`, in a checkout `pip install -e '.[hf]'`:
transformers, datasets). Both are imported lazily, so the rest of spd works without them; using one that is
not installed raises HFExtraMissingError naming that command.

Names are resolved like this:
- an existing local path (or one that looks like a path: absolute, `./`, `../`, `~`) is loaded from disk with
  `local_files_only=True`; a dataset directory written by `save_to_disk` goes through `load_from_disk`, any
  other directory or data file (json/jsonl/txt/csv/parquet) through `load_dataset`;
- anything else is a hub id (`org/name`), loaded with `local_files_only=True` whenever HF_HUB_OFFLINE (or
  TRANSFORMERS_OFFLINE / HF_DATASETS_OFFLINE) is set, i.e. from the local cache only.

A model or dataset that is not there raises `HFModelMissingError` / `HFDatasetMissingError` whose message says
what to download and where to put it; the original library error is not chained (no traceback spew).

Documents become one token stream exactly as the corpus does: each document's tokens followed by EOS, then
`spd.data.batches.BatchStream` cuts it into windows (no BOS, like the reference implementation's LM data).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spd.lm.config import HFDatasetConfig, HFModelConfig

if TYPE_CHECKING:
    import torch


def _torch() -> Any:
    """torch, imported when a model or tensor is made: the error classes and configs here are read when a
    pipeline is planned on a login node, which must not load torch."""
    import torch

    return torch


_TRUE = {"1", "true", "yes", "on"}
_DATA_BUILDERS = {
    ".json": "json", ".jsonl": "json", ".txt": "text", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow",
}  # fmt: skip


class HFExtraMissingError(ImportError):
    """transformers / datasets are not installed."""


class HFResourceMissingError(RuntimeError):
    """A configured model or dataset is not available here; the message says how to get it."""

    def __init__(self, message: str, name: str) -> None:
        super().__init__(message)
        self.name = name


class HFModelMissingError(HFResourceMissingError):
    pass


class HFDatasetMissingError(HFResourceMissingError):
    pass


def hf_offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in _TRUE
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    )


@contextlib.contextmanager
def _offline_mode() -> Iterator[None]:
    """Honour the offline variables as they are now: the libraries read them once, at import time."""
    if not hf_offline():
        yield
        return
    import huggingface_hub.constants as hub_constants

    datasets_config = sys.modules.get("datasets.config")
    saved = (hub_constants.HF_HUB_OFFLINE, getattr(datasets_config, "HF_HUB_OFFLINE", None))
    hub_constants.HF_HUB_OFFLINE = True
    if datasets_config is not None:
        datasets_config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = saved[0]
        if datasets_config is not None:
            datasets_config.HF_HUB_OFFLINE = saved[1]


def _looks_like_path(name: str) -> bool:
    return os.path.isabs(name) or name.startswith(("./", "../", "~", ".\\")) or Path(name).exists()


def _hf_home() -> str:
    return os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise HFExtraMissingError(
            f"{module} is not installed; install the Hugging Face extra: pip install 'spd-pipeline[hf]' "
            "(in a checkout: pip install -e '.[hf]')"
        ) from None


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _missing_model_message(name: str, what: str, err: BaseException) -> str:
    if _looks_like_path(name):
        return (
            f"Hugging Face {what} not found at local path {name!r} ({_one_line(err)}). Put the {what} files "
            f"there (config.json, model.safetensors or pytorch_model.bin, tokenizer.json / tokenizer_config.json): "
            f"on a machine with internet run `hf download <hub-id> --local-dir {name}` (or "
            f"`AutoModelForCausalLM.from_pretrained(<hub-id>).save_pretrained({name!r})`) and copy the directory here."
        )
    mode = "downloads are off (HF_HUB_OFFLINE=1)" if hf_offline() else "it could not be downloaded"
    return (
        f"Hugging Face {what} {name!r} is not in the local cache and {mode} ({_one_line(err)}). On a machine with "
        f"internet run `hf download {name}` and copy the cache to this machine's HF_HOME ({_hf_home()}), or run "
        f"`hf download {name} --local-dir /path/to/{name.split('/')[-1]}` and set the config's {what} to that "
        f"directory."
    )


def _missing_dataset_message(name: str, err: BaseException) -> str:
    if _looks_like_path(name):
        return (
            f"Hugging Face dataset not found at local path {name!r} ({_one_line(err)}). Put it there: a directory "
            f"written by `datasets.load_dataset(<hub-id>).save_to_disk({name!r})`, or data files "
            f"(.jsonl/.json/.txt/.csv/.parquet) with a text column; on a machine with internet "
            f"`hf download <hub-id> --repo-type dataset --local-dir {name}` fetches the files."
        )
    mode = "downloads are off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)" if hf_offline() else "it could not be loaded"
    return (
        f"Hugging Face dataset {name!r} is not available locally and {mode} ({_one_line(err)}). On a machine with "
        f"internet run `python -c \"import datasets; datasets.load_dataset('{name}').save_to_disk('/path/to/"
        f"{name.split('/')[-1]}')\"` (or `hf download {name} --repo-type dataset --local-dir /path/to/"
        f"{name.split('/')[-1]}`), copy the directory here and set the config's dataset to it; or fill "
        f"the cache under HF_HOME ({_hf_home()}) with the same load_dataset call."
    )


def load_hf_tokenizer(name_or_path: str, revision: str | None = None) -> Any:
    transformers = _require("transformers")
    local = _looks_like_path(name_or_path)
    path = str(Path(name_or_path).expanduser()) if local else name_or_path
    try:
        with _offline_mode():
            return transformers.AutoTokenizer.from_pretrained(
                path, revision=None if local else revision, local_files_only=local or hf_offline()
            )
    except (OSError, ValueError) as err:
        raise HFModelMissingError(_missing_model_message(name_or_path, "tokenizer", err), name_or_path) from None


def load_hf_causal_lm(config: HFModelConfig, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Any]:
    """(model in eval mode with frozen parameters, tokenizer). Raise HFModelMissingError if absent."""
    model = load_hf_model(config, device)
    return model, load_hf_tokenizer(config.tokenizer or config.model, None if config.tokenizer else config.revision)


def load_hf_model(config: HFModelConfig, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The causal LM alone (eval mode, frozen; `config.tokenizer` is not read). HFModelMissingError if absent."""
    transformers = _require("transformers")
    name = config.model
    local = _looks_like_path(name)
    path = str(Path(name).expanduser()) if local else name
    if local and not Path(path).is_dir():
        raise HFModelMissingError(_missing_model_message(name, "model", FileNotFoundError("no such directory")), name)
    try:
        with _offline_mode():
            model = transformers.AutoModelForCausalLM.from_pretrained(
                path,
                revision=None if local else config.revision,
                local_files_only=local or hf_offline(),
                dtype=getattr(_torch(), config.dtype),
            )
    except (OSError, ValueError) as err:
        raise HFModelMissingError(_missing_model_message(name, "model", err), name) from None
    return model.to(device).eval().requires_grad_(False)


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "state.json", "dataset_info.json"))


def load_hf_dataset(config: HFDatasetConfig) -> Any:
    """The configured split as a `datasets.Dataset` (or IterableDataset when streaming)."""
    datasets = _require("datasets")
    name = config.dataset
    try:
        with _offline_mode():
            ds = _load_dataset(datasets, config)
    except ValueError:
        raise
    except OSError as err:  # FileNotFoundError, ConnectionError, hub errors: the data is not here
        raise HFDatasetMissingError(_missing_dataset_message(name, err), name) from None
    columns = ds.column_names
    if columns is not None and config.column not in columns:
        raise ValueError(f"dataset {name!r} has no column {config.column!r} (columns: {', '.join(columns)})")
    return ds


def _load_dataset(datasets: Any, config: HFDatasetConfig) -> Any:
    name = config.dataset
    if _looks_like_path(name):
        path = Path(name).expanduser()
        if not path.exists():
            raise FileNotFoundError("no such file or directory")
        if _is_saved_dataset(path):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if config.split not in ds:
                    raise ValueError(f"{name} has no split {config.split!r} (splits: {', '.join(ds)})")
                ds = ds[config.split]
        elif path.is_file():
            builder = _DATA_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise ValueError(f"cannot read {path.suffix!r} files; use one of {', '.join(_DATA_BUILDERS)}")
            ds = datasets.load_dataset(
                builder, data_files={config.split: str(path)}, split=config.split, streaming=config.streaming
            )
        else:
            ds = datasets.load_dataset(str(path), config.subset, split=config.split, streaming=config.streaming)
    else:
        ds = datasets.load_dataset(name, config.subset, split=config.split, streaming=config.streaming)
    return ds


def _documents(ds: Iterable[dict], column: str, max_documents: int | None) -> Iterable[Any]:
    for i, row in enumerate(ds):
        if max_documents is not None and i >= max_documents:
            return
        yield row[column]


def tokens_to_stream(docs: Iterable[list[int]], eos_id: int) -> torch.Tensor:
    """Concatenate token lists, each followed by EOS, into one 1-D int64 stream."""
    out: list[int] = []
    for ids in docs:
        out.extend(ids)
        out.append(eos_id)
    torch = _torch()
    return torch.tensor(out, dtype=torch.int64)


def hf_token_stream(ds: Iterable[dict], tokenizer: Any, config: HFDatasetConfig, chunk: int = 512) -> torch.Tensor:
    """Tokenise a dataset's documents into the stream `BatchStream` consumes (docs joined by EOS)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id; documents cannot be separated")
    docs = _documents(ds, config.column, config.max_documents)
    if config.is_tokenized:
        return tokens_to_stream((list(map(int, d)) for d in docs), eos)

    def tokenized() -> Iterable[list[int]]:
        buf: list[str] = []
        for text in docs:
            buf.append(text)
            if len(buf) == chunk:
                yield from tokenizer(buf, add_special_tokens=False)["input_ids"]
                buf = []
        if buf:
            yield from tokenizer(buf, add_special_tokens=False)["input_ids"]

    return tokens_to_stream(tokenized(), eos)


def load_hf_token_stream(config: HFDatasetConfig, tokenizer: Any) -> torch.Tensor:
    return hf_token_stream(load_hf_dataset(config), tokenizer, config)

"""Train the tiny LM on the story corpus (CPU, about a minute) and save / load its checkpoint.

Checkpoint directory (written as a whole: temp directory + os.replace; the same layout as the toy targets in
spd/targets, so a loader can dispatch on `config.kind`):

    target_config.json   {"config": TinyLMConfig, "info": {...}}; info holds the training config, the final
                         train / val loss, steps, wall time, the corpus path and manifest hash, library
                         versions and `tokenizer_path` (relative to this directory)
    target.pt            state dict (a tied lm_head.weight shares embed.weight's storage)
    tokenizer.json       a copy of the corpus tokenizer, so the checkpoint is self-contained

Determinism: the initial weights come from `seed` (drawn inside torch.random.fork_rng, so the caller's
global RNG is untouched), the data order from `dataset_seed` alone (spd/data/batches.py); nothing else is
random. Same configs and thread count -> identical weights.
"""

from __future__ import annotations

import hashlib
import math
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from spd.data.batches import BatchConfig, BatchStream, iter_epochs
from spd.data.corpus import Corpus
from spd.data.io import atomic_directory, json_bytes, write_file
from spd.lm.config import TinyLMTrainConfig as TinyLMTrainConfig
from spd.lm.model import TinyLM, TinyLMConfig

TARGET_CONFIG_FILE = "target_config.json"
TARGET_STATE_FILE = "target.pt"
TOKENIZER_FILE = "tokenizer.json"


def _lr(step: int, cfg: TinyLMTrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def lm_loss(model: torch.nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over windows [B, T + 1] (inputs [:, :-1], targets [:, 1:])."""
    logits = model(windows[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))


@torch.no_grad()
def evaluate_loss(
    model: torch.nn.Module, tokens: torch.Tensor, seq_len: int, batch_size: int, max_batches: int | None = None
) -> float:
    """Mean next-token loss over the first `max_batches` unshuffled windows of a stream (all if None)."""
    n_windows = len(tokens) // seq_len
    batch_size = min(batch_size, n_windows)
    stream = BatchStream(tokens, BatchConfig(seq_len=seq_len, batch_size=batch_size, shuffle=False))
    n = len(stream) if max_batches is None else min(max_batches, len(stream))
    was_training = model.training
    model.eval()
    total = sum(lm_loss(model, stream.batch(i).tokens).item() for i in range(n))
    model.train(was_training)
    return total / n


def train_tiny_lm(corpus: Corpus, cfg: TinyLMTrainConfig, log: Callable[[str], None] = print) -> tuple[TinyLM, dict]:
    """Train a TinyLM on the corpus' train split; returns the model (eval mode, frozen) and a training record."""
    threads = torch.get_num_threads()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _train(corpus, cfg, log)
    finally:
        torch.set_num_threads(threads)


def _train(corpus: Corpus, cfg: TinyLMTrainConfig, log: Callable[[str], None]) -> tuple[TinyLM, dict]:
    model_cfg = cfg.model.model_copy(update={"vocab_size": corpus.vocab_size})
    model_cfg = TinyLMConfig(**model_cfg.model_dump())  # re-validate
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = TinyLM(model_cfg)
    seq_len = model_cfg.n_ctx + 1
    train_tokens, val_tokens = corpus.tokens("train"), corpus.tokens("val")
    batches = iter_epochs(
        train_tokens, BatchConfig(seq_len=seq_len, batch_size=cfg.batch_size, dataset_seed=cfg.dataset_seed)
    )
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=cfg.betas,
    )
    model.train()
    t0 = time.perf_counter()
    first_loss, recent = None, []
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg)
        loss = lm_loss(model, next(batches).tokens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        value = loss.item()
        first_loss = value if first_loss is None else first_loss
        recent = [*recent[-19:], value]
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            log(f"step {step:5d}  loss {value:.4f}  lr {_lr(step, cfg):.2e}  {time.perf_counter() - t0:.1f}s")
    train_s = time.perf_counter() - t0
    model.eval()
    train_loss = evaluate_loss(model, train_tokens, seq_len, cfg.batch_size, cfg.eval_batches)
    val_loss = evaluate_loss(model, val_tokens, seq_len, 64)
    log(f"done: train loss {train_loss:.4f}  val loss {val_loss:.4f}  ({train_s:.1f}s training)")
    info = {
        "train_config": cfg.model_dump(mode="json"),
        "steps": cfg.steps,
        "tokens_seen": cfg.steps * cfg.batch_size * model_cfg.n_ctx,
        "first_step_loss": first_loss,
        "last_steps_train_loss": sum(recent) / len(recent),
        "final_train_loss": train_loss,
        "final_val_loss": val_loss,
        "uniform_loss": math.log(model_cfg.vocab_size),
        "train_wall_s": train_s,
        "torch_threads": torch.get_num_threads(),
        "n_params": model.n_params(),
        "n_params_non_embedding": model.n_params(include_embedding=False),
        "corpus_path": str(corpus.path.resolve()),
        "corpus_manifest_sha256": hashlib.sha256((corpus.path / "manifest.json").read_bytes()).hexdigest(),
        "corpus_tokenizer_path": str(corpus.tokenizer_path.resolve()),
        "tokenizer_path": TOKENIZER_FILE,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    model.requires_grad_(False)
    return model, info


def save_lm(
    model: TinyLM, info: dict[str, Any], tokenizer_path: str | Path, out_dir: str | Path, overwrite: bool = False
) -> Path:
    """Write the checkpoint directory atomically (see the module docstring)."""
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp / TARGET_STATE_FILE)
        shutil.copyfile(tokenizer_path, tmp / TOKENIZER_FILE)
        record = {"config": model.config.model_dump(mode="json"), "info": {**info, "tokenizer_path": TOKENIZER_FILE}}
        write_file(tmp / TARGET_CONFIG_FILE, json_bytes(record))
    return out_dir


@dataclass(frozen=True)
class LMCheckpoint:
    model: TinyLM
    config: TinyLMConfig
    info: dict[str, Any]
    tokenizer_path: Path


def load_lm_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LMCheckpoint:
    """Rebuild a saved tiny LM: eval mode, parameters frozen, on `device`, plus its config and record."""
    import json

    path = Path(path)
    if path.is_file():
        path = path.parent
    cfg_file = path / TARGET_CONFIG_FILE
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{path} is not a tiny-LM checkpoint: {TARGET_CONFIG_FILE} missing")
    record = json.loads(cfg_file.read_text())
    config = TinyLMConfig(**record["config"])
    model = TinyLM(config)
    state = torch.load(path / TARGET_STATE_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.to(device).eval().requires_grad_(False)
    return LMCheckpoint(model, config, record["info"], path / record["info"]["tokenizer_path"])


def load_lm(path: str | Path, device: str | torch.device = "cpu") -> TinyLM:
    """The trained tiny LM, ready for eval (eval mode, frozen)."""
    return load_lm_checkpoint(path, device).model


def train_and_save_lm(
    corpus: Corpus,
    cfg: TinyLMTrainConfig,
    out_dir: str | Path,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> LMCheckpoint:
    model, info = train_tiny_lm(corpus, cfg, log)
    save_lm(model, info, corpus.tokenizer_path, out_dir, overwrite=overwrite)
    return load_lm_checkpoint(out_dir)


@torch.no_grad()
def token_losses(model: torch.nn.Module, tokens: torch.Tensor, n_ctx: int, batch_size: int = 64) -> torch.Tensor:
    """Next-token loss of every stream position, predicted from the tokens before it in its window.

    The stream is cut into unshuffled windows of n_ctx + 1 tokens; a window's first token and the tail past
    the last whole window have no prediction (NaN).
    """
    seq_len = n_ctx + 1
    out = torch.full((len(tokens),), float("nan"))
    n_windows = len(tokens) // seq_len
    was_training = model.training
    model.eval()
    for s in range(0, n_windows, batch_size):
        starts = torch.arange(s, min(s + batch_size, n_windows)) * seq_len
        windows = tokens[starts[:, None] + torch.arange(seq_len)]
        logits = model(windows[:, :-1])
        loss = F.cross_entropy(logits.transpose(1, 2), windows[:, 1:], reduction="none")  # [b, n_ctx]
        out[(starts[:, None] + torch.arange(1, seq_len)).reshape(-1)] = loss.reshape(-1)
    model.train(was_training)
    return out


def feature_losses(model: torch.nn.Module, corpus: Corpus, n_ctx: int, split: str = "val") -> dict[str, float]:
    """Mean next-token loss on the tokens of each planted feature (and 'all'): how well the LM learned it."""
    losses = token_losses(model, corpus.tokens(split), n_ctx)
    valid = ~losses.isnan()
    out = {"all": losses[valid].mean().item()}
    for f in corpus.manifest["features"]:
        mask = corpus.feature_mask(f, split) & valid
        out[f] = losses[mask].mean().item() if mask.any() else float("nan")
    return out

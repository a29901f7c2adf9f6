"""A small byte-level BPE tokenizer trained locally with the `tokenizers` library.

Byte-level BPE (GPT-2 style pre-tokenisation: a word carries its leading space, punctuation and digits are
split off) is lossless: decode(encode(text)) == text for any string. With the corpus' closed vocabulary and a
few hundred merges every planted feature word becomes one token (" Quill", " foxes", ...) while invented names
and most two-digit numbers stay several tokens. `EOS` separates documents in the token stream.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE on `texts`; id 0 is `EOS`, ids 1..256 the bytes, then the merges."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=False,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer.json written by `Tokenizer.save` (ours, or any Hugging Face fast tokenizer file)."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer at {path}")
    return Tokenizer.from_file(str(path))


def eos_id(tok: Tokenizer) -> int:
    i = tok.token_to_id(EOS)
    if i is None:
        raise ValueError(f"tokenizer has no {EOS} token")
    return i


def word_token_ids(tok: Tokenizer, word: str, leading_space: bool = True) -> list[int]:
    """Token ids of `word` as it appears in running text (after a space, by default)."""
    return tok.encode((" " if leading_space else "") + word, add_special_tokens=False).ids

"""Where an LM decomposition's token windows come from: the story corpus (which also carries the planted ground
truth) or a Hugging Face dataset's token cache. Both hold each split as one token file of the same layout, so
harvest and attributions read either through these few members and never ask which it is:

    path, manifest["n_tokens"][split], token_file(split), token_dtype, tokens(split), documents(split),
    tokenizer_path, vocab_size
"""

from __future__ import annotations

from spd.data.corpus import Corpus
from spd.data.token_cache import TokenCache
from spd.data.token_files import TokenFiles

TokenSource = TokenFiles  # Corpus or TokenCache
__all__ = ["Corpus", "TokenCache", "TokenFiles", "TokenSource"]

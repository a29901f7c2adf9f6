"""The LM world's data: a synthetic story corpus with planted features, its tokenizer, and token batches.

    build_corpus(CorpusConfig(seed=0, n_docs=4000), "out/corpus") -> Corpus
    BatchStream(corpus.tokens("train"), BatchConfig(seq_len=129, batch_size=32, dataset_seed=0))

See spd/data/features.py for the planted features and spd/data/corpus.py for the directory format.
"""

from spd.data.batches import Batch, BatchConfig, BatchStream
from spd.data.corpus import Corpus, CorpusConfig, build_corpus
from spd.data.features import FEATURE_IDS, FEATURES, FeatureSpec
from spd.data.tokenizer import EOS, load_tokenizer, train_tokenizer

__all__ = [
    "EOS",
    "FEATURES",
    "FEATURE_IDS",
    "Batch",
    "BatchConfig",
    "BatchStream",
    "Corpus",
    "CorpusConfig",
    "FeatureSpec",
    "build_corpus",
    "load_tokenizer",
    "train_tokenizer",
]

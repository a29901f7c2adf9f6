"""The LM world's data: a synthetic story corpus with planted features, its tokenizer, and token batches.

    build_corpus(CorpusConfig(seed=0, n_docs=4000), "out/corpus") -> Corpus
    BatchStream(corpus.tokens("train"), BatchConfig(seq_len=129, batch_size=32, dataset_seed=0))

See spd/data/features.py for the planted features and spd/data/corpus.py for the directory format.
The names below load on first use (spd.lazy): the torch-free modules (config, hf_source, io), which a
pipeline's validation and the LLM stages read, must be importable without importing torch.
"""

from spd.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "spd.data.batches": ("Batch", "BatchConfig", "BatchStream"),
        "spd.data.config": ("CorpusConfig",),
        "spd.data.corpus": ("Corpus", "build_corpus"),
        "spd.data.features": ("FEATURES", "FEATURE_IDS", "FeatureSpec"),
        "spd.data.tokenizer": ("EOS", "load_tokenizer", "train_tokenizer"),
    },
)

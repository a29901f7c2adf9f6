"""SPD losses, one function per file.

The names below load on first use (spd.lazy): spd.losses.config, which a pipeline file's validation reads on a
login node, must be importable without importing torch.
"""

from spd.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "spd.losses.ci_masked_recon": ("ci_masked_recon_loss",),
        "spd.losses.ci_masked_recon_layerwise": ("ci_masked_recon_layerwise_loss",),
        "spd.losses.divergence": ("divergence_sum_and_count",),
        "spd.losses.faithfulness": ("faithfulness_loss",),
        "spd.losses.importance_minimality": ("annealed_p", "importance_minimality_loss"),
        "spd.losses.pgd_recon": ("pgd_recon_layerwise_loss", "pgd_recon_loss"),
        "spd.losses.stochastic_recon": ("stochastic_recon_loss",),
        "spd.losses.stochastic_recon_layerwise": ("stochastic_recon_layerwise_loss",),
        "spd.losses.unmasked_recon": ("unmasked_recon_loss",),
    },
)

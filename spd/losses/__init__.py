"""SPD losses, one function per file.

The names below load on first use (spd.lazy): spd.losses.config, which a pipeline file's validation reads on a
login node, must be importable without importing torch.
"""

from spd.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "annealed_p": "spd.losses.importance_minimality",
        "ci_masked_recon_layerwise_loss": "spd.losses.ci_masked_recon_layerwise",
        "ci_masked_recon_loss": "spd.losses.ci_masked_recon",
        "divergence_sum_and_count": "spd.losses.divergence",
        "faithfulness_loss": "spd.losses.faithfulness",
        "importance_minimality_loss": "spd.losses.importance_minimality",
        "pgd_recon_layerwise_loss": "spd.losses.pgd_recon",
        "pgd_recon_loss": "spd.losses.pgd_recon",
        "stochastic_recon_layerwise_loss": "spd.losses.stochastic_recon_layerwise",
        "stochastic_recon_loss": "spd.losses.stochastic_recon",
        "unmasked_recon_loss": "spd.losses.unmasked_recon",
    },
)

__all__ = [
    "annealed_p",
    "ci_masked_recon_layerwise_loss",
    "ci_masked_recon_loss",
    "divergence_sum_and_count",
    "faithfulness_loss",
    "importance_minimality_loss",
    "pgd_recon_layerwise_loss",
    "pgd_recon_loss",
    "stochastic_recon_layerwise_loss",
    "stochastic_recon_loss",
    "unmasked_recon_loss",
]

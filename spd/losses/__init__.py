"""SPD losses, one function per file (reference spec section 5)."""

from spd.losses.ci_masked_recon import ci_masked_recon_loss
from spd.losses.ci_masked_recon_layerwise import ci_masked_recon_layerwise_loss
from spd.losses.divergence import divergence_sum_and_count
from spd.losses.faithfulness import faithfulness_loss
from spd.losses.importance_minimality import annealed_p, importance_minimality_loss
from spd.losses.pgd_recon import pgd_recon_layerwise_loss, pgd_recon_loss
from spd.losses.stochastic_recon import stochastic_recon_loss
from spd.losses.stochastic_recon_layerwise import stochastic_recon_layerwise_loss
from spd.losses.unmasked_recon import unmasked_recon_loss

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

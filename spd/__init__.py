"""The science: SPD models, CI functions, losses, targets, data, harvest, attributions, interp.

Usable without the orchestrator; imports neither `pipeline` nor `stages`.
"""

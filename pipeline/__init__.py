"""The orchestrator: plans a DAG of stages, submits it, and reports on it.

It knows stages only through `pipeline.registry` and nothing of SPD itself.
"""

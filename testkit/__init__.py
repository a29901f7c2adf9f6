"""Support code shared by the test suite (tests/) and the benchmarks (benchmarks/).

Not part of the installed package: it is imported from the checkout (pytest puts the repository root on
sys.path; each benchmark puts it there to measure the checkout's code).

    stages_for_tests  the test-only stages (a stage plugin: SPD_PIPELINE_PLUGINS=testkit.stages_for_tests)
    lm_fixtures       the tiny LM decomposition, built through the real decompose stage, and a small harvest
    llm_server        the loopback server that speaks the OpenAI and Anthropic wire formats and injects faults
    report_support    synthetic run directories with every store the report reads, at any size
    slurm_support     the real-SLURM helpers (is a cluster usable, wait, cancel) and the no-op stages shaped like
                      the pipeline's DAG (a stage plugin: SPD_PIPELINE_PLUGINS=testkit.slurm_support)
"""

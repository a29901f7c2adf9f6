"""The component panel a researcher compares with feature dashboards (issue 27): histograms, examples grouped by
activation quantile with a count control, co-firing neighbours as links, visible leading spaces, PMI tables with a
minimum count, logit effects of residual-stream writers, the module overview, and hostile text kept as text.

Synthetic runs (testkit/report_support.py) with a few rows planted in the harvest store; the logit effects on a tiny
LM decomposition made by the decompose stage.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
import torch

from spd.harvest import HarvestStore
from spd.report.data import gather_report
from spd.report.options import ReportOptions
from spd.report.render import write_report
from testkit.lm_fixtures import build_tiny_lm_decomposition
from testkit.report_support import SyntheticRun, make_synthetic_run

HOSTILE = '</script><img src=x onerror="window.pwned=1">'
TWO, SPACE_TWO = 2, 3  # token ids whose texts are "2" and " 2"


def _planted_run(root: Path) -> tuple[SyntheticRun, str, str]:
    """A synthetic run whose first alive component co-fires with the second and lists "2" and " 2" as inputs."""
    run = make_synthetic_run(root, n_components=24, n_modules=2)
    harvest = root / "stages/harvest/out/harvest.duckdb"
    first, second = run.alive[0], run.alive[1]
    with duckdb.connect(str(harvest)) as con:
        index = dict(con.execute("SELECT key, component FROM components").fetchall())
        a, b = index[first], index[second]
        con.execute("DELETE FROM cofiring")
        con.execute("INSERT INTO cofiring VALUES (?, ?, 7), (?, ?, 7)", [a, b, b, a])
        # a neighbourhood for a few more components: several partners each, counts that rank them differently
        # by Jaccard than by count (partners' firing counts differ), ties included
        others = [index[k] for k in run.alive[2:10]]
        for i, c in enumerate(others[:4]):
            for j, o in enumerate(others[4:]):
                count = 3 + (i * 5 + j * 3) % 7
                con.execute("INSERT INTO cofiring VALUES (?, ?, ?), (?, ?, ?)", [c, o, count, o, c, count])
        con.execute("UPDATE vocab SET text = '2' WHERE token = ?", [TWO])
        con.execute("UPDATE vocab SET text = ' 2' WHERE token = ?", [SPACE_TWO])
        con.execute("DELETE FROM token_stats WHERE component = ? AND direction = 'input'", [a])
        con.execute(
            "INSERT INTO token_stats VALUES (?, 'input', ?, 40, 0.5, 0.1, 3.0), (?, 'input', ?, 30, 0.4, 0.1, 2.9), "
            "(?, 'input', 7, 2, 1.0, 0.01, 9.0)",  # the rarest token has the highest PMI: the minimum count hides it
            [a, TWO, a, SPACE_TWO, a],
        )
    return run, first, second


def test_panel_data_cofiring_token_minimum_and_overview(tmp_path: Path) -> None:
    run, first, second = _planted_run(tmp_path / "run")
    model = gather_report(run.root, run.status, ReportOptions(pmi_min_count=5))
    detail = model["details"][first]
    assert detail["cofiring"][0][:2] == [
        second,
        pytest.approx(7 / (detail["firings"] + model["details"][second]["firings"] - 7), rel=1e-3),
    ]
    assert [row[0] for row in detail["token_stats"]["input"]] == [TWO, SPACE_TWO]  # token 7 (count 2) left out
    assert model["tokens"][str(TWO)] == "2" and model["tokens"][str(SPACE_TWO)] == " 2"
    row = model["rows"][[r[0] for r in model["rows"]].index(first)]
    assert row[[c["id"] for c in model["columns"]].index("tokens")] == "2 ·2"
    with HarvestStore.open(run.root / "stages/harvest/out") as store:
        assert sum(1 for key in run.alive[:10] if len(store.cofiring(key, top_k=6)) > 1) >= 8
        for key in run.alive[:10]:
            want = [[s.other_key, s.jaccard] for s in store.cofiring(key, by="jaccard", top_k=6)]
            assert [[k, j] for k, j, _ in model["details"][key]["cofiring"]] == [
                [k, pytest.approx(j, rel=5e-3)]
                for k, j in want  # 3 significant digits
            ]
        n_components = len(store.summaries())
    overview = model["modules"]
    assert sum(m["n_components"] for m in overview) == n_components
    assert sum(m["n_alive"] for m in overview) == len(run.alive)
    assert all(sum(m["density"]["counts"]) + m["density"]["dead"] == m["n_components"] for m in overview)
    for name in ("detection", "fuzzing", "intruder"):
        scored = sum(1 for k in run.alive if run.scores[name][k] is not None)
        assert sum(m["scores"][name]["n"] for m in overview) == scored


def test_logit_effects_of_residual_writers_equal_the_unembedding_of_their_direction(tmp_path: Path) -> None:
    from spd.models.checkpoint import load_decomposition
    from spd.report.logit_effects import read_logit_effects

    out = build_tiny_lm_decomposition(tmp_path / "dec")
    model = load_decomposition(out)
    writer, reader = "layers.0.mlp.down_proj", "layers.0.mlp.up_proj"
    keys = [f"{writer}:{c}" for c in range(4)] + [f"{reader}:0"]
    effects = read_logit_effects(out, keys, 3)
    assert effects.available and effects.info["modules"] == [writer]
    assert f"{reader}:0" not in effects.effects  # its output is the MLP's hidden layer, not the residual stream
    target = model.target_model
    for c in range(4):
        u = model.components(writer).U[c].detach()
        logits = target.lm_head(target.final_norm.weight * u)  # the same product, through the model's own modules
        top, bottom = logits.topk(3), (-logits).topk(3)
        got = effects.effects[f"{writer}:{c}"]
        assert [t for t, _ in got["pos"]] == top.indices.tolist()
        assert [t for t, _ in got["neg"]] == bottom.indices.tolist()
        assert [v for _, v in got["pos"]] == pytest.approx(top.values.tolist(), rel=1e-3)
    assert read_logit_effects(tmp_path / "missing", keys, 3).available is False


def test_component_panel_in_chromium(tmp_path: Path, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    run, first, second = _planted_run(tmp_path / "run")
    model = gather_report(run.root, run.status)
    model["details"][first]["label"] = {**(model["details"][first]["label"] or {}), "label": HOSTILE}
    model["rows"][[r[0] for r in model["rows"]].index(first)][4] = HOSTILE
    model["tokens"]["0"] = HOSTILE
    for ex in model["details"][first]["examples"]["top"][:1]:
        ex[0][0] = 0  # the hostile token inside an example
    page = write_report(model, tmp_path)
    browser.get(page.as_uri() + "#component=" + first)
    wait = WebDriverWait(browser, 20)
    wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#panel .example")))
    panel = browser.find_element(By.ID, "panel")

    # hostile label and token: shown as text, no element made from them
    assert browser.execute_script("return document.querySelectorAll('img').length") == 0
    assert browser.execute_script("return window.pwned") is None
    assert HOSTILE in panel.text

    # histograms of activation and CI over the uniform sample of firings: every sampled firing in one bar
    n_random = len(model["details"][first]["examples"]["random"])
    histograms = panel.find_elements(By.CSS_SELECTOR, "[data-histogram]")
    assert len(histograms) == 2
    for h in histograms:
        assert sum(int(b.get_attribute("data-count")) for b in h.find_elements(By.CSS_SELECTOR, ".hbar")) == n_random
    # groups: top, quantile bands, the uniform sample; the count control limits each group
    groups = [g.get_attribute("data-group") for g in panel.find_elements(By.CSS_SELECTOR, ".example-group")]
    assert groups[0] == "top" and groups[-1] == "random" and any(g.startswith("band-") for g in groups)
    count = Select(panel.find_element(By.CSS_SELECTOR, 'select[aria-label="examples per group"]'))
    count.select_by_value("3")
    for group in panel.find_elements(By.CSS_SELECTOR, ".example-group"):
        assert len(group.find_elements(By.CSS_SELECTOR, ".example")) <= 3
    count.select_by_value("all")
    uniform = panel.find_element(By.CSS_SELECTOR, '.example-group[data-group="random"]')
    assert len(uniform.find_elements(By.CSS_SELECTOR, ".example")) == n_random
    # CI shading is the default
    assert (
        Select(
            panel.find_element(By.CSS_SELECTOR, 'select[aria-label="shade by"]')
        ).first_selected_option.get_attribute("value")
        == "ci"
    )

    # "2" and " 2" look different, and hovering names the token id
    cells = {
        c.get_attribute("title"): c.text
        for c in panel.find_elements(By.CSS_SELECTOR, 'table.token-stats[data-direction="input"] code')
    }
    assert cells[f"token {TWO}"] == "2" and cells[f"token {SPACE_TWO}"] == "·2"

    # a co-firing neighbour's link opens that component
    panel.find_element(By.CSS_SELECTOR, "table.cofiring a.node").click()
    wait.until(lambda d: d.find_element(By.ID, "panel").get_attribute("data-key") == second)

    # the module overview: one row per module; clicking one filters the table to it
    modules = browser.find_elements(By.CSS_SELECTOR, "table.modules tr[data-module]")
    assert [m.get_attribute("data-module") for m in modules] == [m["module"] for m in model["modules"]]
    modules[1].find_element(By.TAG_NAME, "a").click()  # an exact match ("=<module>"), not a substring
    want = sum(1 for k in run.alive if k.rpartition(":")[0] == model["modules"][1]["module"])
    wait.until(lambda d: d.find_element(By.ID, "match-count").text.startswith(f"{want} of"))


def test_the_final_norm_of_llama_and_gpt2_targets_shapes_the_direction() -> None:
    """RMSNorm (our Llama's transformer.rms_f) scales by its gain; LayerNorm (GPT-2's ln_f) centres first."""
    from spd.report.logit_effects import final_norm, through_final_norm
    from spd.targets.gpt2 import GPT2, GPT2Config
    from spd.targets.llama import Llama, LlamaConfig

    small = {"block_size": 8, "vocab_size": 11, "n_layer": 1, "n_head": 2, "n_embd": 4}
    llama, gpt2 = Llama(LlamaConfig(**small, n_intermediate=8, n_key_value_heads=2)), GPT2(GPT2Config(**small))
    u = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    norm = final_norm(llama, 4)
    assert norm is llama.transformer["rms_f"]
    with torch.no_grad():
        norm.weight.fill_(3.0)
    assert through_final_norm(u, norm).tolist() == [[3.0, 6.0, 9.0, 18.0]]
    norm = final_norm(gpt2, 4)
    assert norm is gpt2.ln_f
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 1.0, 2.0, 2.0]))
    assert through_final_norm(u, norm).tolist() == [[-2.0, -1.0, 0.0, 6.0]]  # u - mean(u) = [-2, -1, 0, 3]
    assert final_norm(torch.nn.Linear(4, 4), 4) is None

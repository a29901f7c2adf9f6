"""The `serve` page (spd/serve/templates/serve.*) in headless Chromium, against the app served in-process by uvicorn:
a prompt analysed, the attribution graph drawn, a component's panel opened from it, an intervention applied;
model, tokenizer and label texts that look like HTML stay text. And a token-protected app's page loading its data.

Chromium: see tests/test_report.py (skipped without it outside CI). The first test saves screenshots and prints
their paths (REPORT_ARTIFACTS_DIR chooses the folder).
"""

from __future__ import annotations

from typing import Any

import pytest

from testkit.report_support import screenshot
from tests.serve_support import running_server

HOSTILE_LABEL = '</script><img src=x onerror="window.__pwned=1">'
TOO_LONG = '<img src=x onerror="window.__pwned=1"> Once upon a time'  # 44 tokens: beyond the 32 of the window
PROMPT = "<img src=x onerror=__pwned=1> Once"  # 29 tokens


@pytest.fixture(scope="module")
def served(serve_run) -> tuple[Any, str]:
    """The run opened for serving, one component active at PROMPT's last position relabelled with HOSTILE_LABEL;
    returns (run, that component's key)."""
    from spd.serve.session import open_served_run
    from spd.serve.views import PromptRequest, prompt_view

    run_dir, status = serve_run
    run = open_served_run(run_dir, status, log=lambda *_: None)
    active = prompt_view(run, PromptRequest(text=PROMPT))["positions"][-1]["active"]
    key = next(k for k, _ in active if k in run.panels.details)
    detail = run.panels.details[key]
    if detail.get("label"):
        detail["label"]["label"] = HOSTILE_LABEL
    else:
        detail["label"] = {
            "label": HOSTILE_LABEL,
            "confidence": "high",
            "reasoning": HOSTILE_LABEL,
            "provider": "x",
            "model": "y",
        }
    return run, key


def _wait_state(wait, element_id: str, want: str = "done") -> None:
    wait.until(lambda d: d.find_element("id", element_id).get_attribute("data-state") in (want, "error"))


def _no_injection(browser) -> None:
    assert browser.execute_script("return document.getElementsByTagName('img').length") == 0
    assert browser.execute_script("return typeof window.__pwned") == "undefined"


def test_serve_page_in_headless_chromium(served, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from spd.serve.app import create_app

    run, hostile_key = served
    with running_server(create_app(run)) as url:
        browser.get(url + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
        assert browser.find_element(By.ID, "run-info").get_attribute("data-state") == "done"
        assert "vocabulary 300" in browser.find_element(By.ID, "run-info").text

        # a prompt beyond the decomposition's window: the API's error shown in place
        prompt = browser.find_element(By.ID, "prompt")
        prompt.send_keys(TOO_LONG)
        browser.find_element(By.ID, "analyse").click()
        _wait_state(wait, "predictions", "error")
        error = browser.find_element(By.ID, "prompt-error")
        assert "failed" in error.get_attribute("class") and "44 tokens" in error.text
        _no_injection(browser)

        # the prompt analysed: its tokens (spaces as "·"), the last position selected, components and predictions
        prompt.clear()
        prompt.send_keys(PROMPT)
        browser.find_element(By.ID, "analyse").click()
        _wait_state(wait, "predictions")
        assert browser.find_element(By.ID, "predictions").get_attribute("data-state") == "done"
        chips = browser.find_elements(By.CSS_SELECTOR, "#tokens .tok-chip")
        assert len(chips) == 29 and "selected" in chips[-1].get_attribute("class")
        assert chips[0].text == "<" and chips[-4].text == "·"
        kl_before = float(browser.find_element(By.CSS_SELECTOR, "#predictions .kl").get_attribute("data-kl"))
        rows = browser.find_elements(By.CSS_SELECTOR, "#components tr[data-key]")
        assert hostile_key in [r.get_attribute("data-key") for r in rows]
        hostile_row = browser.find_element(By.CSS_SELECTOR, f'#components tr[data-key="{hostile_key}"]')
        assert HOSTILE_LABEL in hostile_row.text  # the label as text
        _no_injection(browser)

        # the graph of the last position's prediction: nodes in rows, component nodes clickable
        _wait_state(wait, "graph")
        graph = browser.find_element(By.ID, "graph")
        assert graph.get_attribute("data-state") == "done"
        assert graph.tag_name == "svg"
        nodes = browser.find_elements(By.CSS_SELECTOR, "#graph circle[data-node]")
        assert nodes and browser.find_elements(By.CSS_SELECTOR, "#graph line.edge")
        assert len(browser.find_elements(By.CSS_SELECTOR, '#graph circle[data-node^="output:"]')) == 1
        n_edges = len(browser.find_elements(By.CSS_SELECTOR, "#graph line.edge"))
        components = browser.find_elements(By.CSS_SELECTOR, "#graph circle[data-key]")
        assert components
        on_graph = [c for c in components if c.get_attribute("data-key") == hostile_key]
        node = on_graph[0] if on_graph else components[0]
        key = node.get_attribute("data-key")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center', inline: 'center'})", node)
        node.click()
        wait.until(lambda d: d.find_element(By.ID, "panel").get_attribute("data-key") == key)
        _wait_state(wait, "panel")
        panel = browser.find_element(By.ID, "panel")
        assert panel.get_attribute("data-state") == "done" and panel.is_displayed()
        assert key in panel.find_element(By.CSS_SELECTOR, "h2").text
        assert browser.execute_script("return location.hash") == "#component=" + key.replace(":", "%3A")
        if key == hostile_key:
            assert HOSTILE_LABEL in panel.find_element(By.CSS_SELECTOR, ".label-text").text
        _no_injection(browser)

        # fewer edges kept with a smaller keep fraction
        browser.execute_script(
            "const k = document.getElementById('keep-fraction'); k.value = '0.2'; k.dispatchEvent(new Event('change'));"
        )
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#graph line.edge")) < n_edges)
        _wait_state(wait, "graph")

        # an intervention: the hostile-labelled component off at this position, applied
        browser.find_element(By.CSS_SELECTOR, f'#components button.change-off[data-key="{hostile_key}"]').click()
        pending = browser.find_elements(By.CSS_SELECTOR, "#changes li[data-key]")
        assert [(li.get_attribute("data-key"), li.get_attribute("data-action")) for li in pending] == [
            (hostile_key, "off")
        ]
        browser.find_element(By.ID, "apply-intervention").click()
        _wait_state(wait, "intervention-result")
        result = browser.find_element(By.ID, "intervention-result")
        assert result.get_attribute("data-state") == "done", result.text
        assert len(result.find_elements(By.CSS_SELECTOR, "table.preds")) == 3
        assert result.find_elements(By.CSS_SELECTOR, "table.preds.intervened tr td")
        kl_target = float(result.find_element(By.CSS_SELECTOR, ".kl-target").text)
        kl_base = float(result.find_element(By.CSS_SELECTOR, ".kl-base").text)
        assert kl_target >= 0 and kl_before >= 0
        assert kl_base > 0  # a component at CI 1 switched off moves the predictions away from the base's
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#history li[data-id]"))
        entry = browser.find_element(By.CSS_SELECTOR, "#history li[data-id]")
        assert hostile_key in entry.text

        # the history entry shows it again after the result was cleared by another prompt
        prompt.clear()
        prompt.send_keys("Once upon")
        browser.find_element(By.ID, "analyse").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#tokens .tok-chip")) != 29)
        assert browser.find_element(By.ID, "intervention-result").get_attribute("data-state") == "empty"
        browser.find_element(By.CSS_SELECTOR, "#history li[data-id]").click()
        wait.until(lambda d: d.find_element(By.ID, "intervention-result").get_attribute("data-state") == "done")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#tokens .tok-chip")) == 29

        _no_injection(browser)
        assert browser.execute_script("return document.body.textContent.includes(arguments[0])", HOSTILE_LABEL)
        assert not [
            e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "status of 422" not in e["message"]
        ]

        browser.find_element(By.ID, "panel-close").click()  # the screenshot shows the panel when one is open
        assert not browser.find_element(By.ID, "panel").is_displayed()
        browser.execute_script("window.scrollTo(0, 0)")
        screenshot(browser, "serve-page.png")
        browser.execute_script("document.getElementById('graph-info').scrollIntoView()")
        screenshot(browser, "serve-graph.png")
        browser.find_element(
            By.CSS_SELECTOR, f'#components a.node[href="#component={hostile_key.replace(":", "%3A")}"]'
        ).click()
        wait.until(lambda d: d.find_element(By.ID, "panel").get_attribute("data-key") == hostile_key)
        _wait_state(wait, "panel")
        assert HOSTILE_LABEL in browser.find_element(By.CSS_SELECTOR, "#panel .label-text").text
        _no_injection(browser)
        screenshot(browser, "serve-panel.png")


def test_serve_page_with_a_token(served, browser) -> None:
    """A token app's page opened as /?token=...: it sends the token as a header and loads the run; without the
    token the page itself is refused."""
    from selenium.webdriver.support.ui import WebDriverWait

    from spd.serve.app import create_app

    run, _ = served
    with running_server(create_app(run, token="s3cret")) as url:
        browser.get(url + "/")
        assert "missing or wrong token" in browser.page_source
        browser.get(url + "/?token=s3cret")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
        info = browser.find_element("id", "run-info")
        assert info.get_attribute("data-state") == "done", info.text
        assert "vocabulary 300" in info.text
        assert browser.find_element("id", "history").get_attribute("data-state") == "done"

"""`run.py serve`: the JSON API on a run made by the pipeline (tests/serve_support.py), through FastAPI's TestClient.

The prompt graph's edges are checked against a brute-force autograd computation written here from the definition
(one forward and one backward per target node, full-length prompt, no batching, no prefixes); interventions
against a direct masked forward; the token rule on the app and on the command line; and that serving writes
nothing under the run's stages/.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from spd.models.masks import ci_mask_infos
from spd.serve.app import check_bind, create_app
from spd.serve.prompt import run_prompt
from spd.serve.session import ServedRun, open_served_run
from tests.conftest import REPO_ROOT, cli_env, run_cli
from tests.serve_support import free_port

PROMPT = "Once upon a time the fox saw a quill and the owl"


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def served(serve_run) -> tuple[ServedRun, TestClient, dict[str, tuple[int, int]]]:
    run_dir, status = serve_run
    before = _files(run_dir / "stages")
    run = open_served_run(run_dir, status)
    return run, TestClient(create_app(run)), before


def _ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()


def _brute_force_edges(run: ServedRun, ids: list[int], threshold: float, position: int, token: int):
    """{(source node id, target node id): grad x act} from the definition, one target node at a time."""
    model = run.model
    ci = run_prompt(model, ids).ci
    target_model = model.target_model

    def cut_forward():
        leaves: dict[str, torch.Tensor] = {}
        acts: dict[str, torch.Tensor] = {}
        handles = []

        def component_hook(path):
            comp = model.components(path)

            def hook(module, args, output):
                h = args[0] @ comp.V
                leaf = h.detach().requires_grad_(True)
                acts[path], leaves[path] = h, leaf
                out = leaf @ comp.U
                return out if comp.bias is None else out + comp.bias

            return hook

        def embedding_hook(module, args, output):
            leaf = output.detach().requires_grad_(True)
            leaves["token"] = leaf
            return leaf

        for path in model.target_module_paths:
            handles.append(target_model.get_submodule(path).register_forward_hook(component_hook(path)))
        handles.append(target_model.get_submodule(run.embedding_module).register_forward_hook(embedding_hook))
        try:
            with torch.enable_grad():
                out = target_model(torch.tensor([ids]))
        finally:
            for h in handles:
                h.remove()
        logits = out if isinstance(out, torch.Tensor) else out.logits
        return leaves, acts, logits

    def credit(target_id: str, value: torch.Tensor, leaves: dict[str, torch.Tensor], edges: dict) -> None:
        names = list(leaves)
        grads = torch.autograd.grad(value, [leaves[n] for n in names], allow_unused=True)
        for name, grad in zip(names, grads, strict=True):
            if grad is None:
                continue
            product = (grad * leaves[name].detach())[0].double()
            if name == "token":
                for p in range(len(ids)):
                    if product[p].sum() != 0:
                        edges[(f"token:{ids[p]}@{p}", target_id)] = float(product[p].sum())
                continue
            for p, c in (ci[name] > threshold).nonzero().tolist():
                if product[p, c] != 0:
                    edges[(f"{name}:{c}@{p}", target_id)] = float(product[p, c])

    edges: dict[tuple[str, str], float] = {}
    for module in model.target_module_paths:
        for p, c in (ci[module][: position + 1] > threshold).nonzero().tolist():  # later ones cannot reach it
            leaves, acts, _ = cut_forward()
            credit(f"{module}:{c}@{p}", acts[module][0, p, c], leaves, edges)
    leaves, _, logits = cut_forward()
    credit(f"output:{token}@{position}", logits[0, position, token], leaves, edges)
    return edges


@pytest.mark.parametrize("at", ["last", "middle"])
def test_prompt_graph_edges_equal_brute_force_autograd(served, at: str) -> None:
    run, client, _ = served
    ids = run.encode(PROMPT)
    threshold = run.ci_threshold
    position = len(ids) - 1 if at == "last" else len(ids) // 2
    body = {"token_ids": ids, "keep_fraction": 1.0, "max_edges": 200_000, "position": position}
    graph = _ok(client.post("/api/graph", json=body))
    assert graph["causal_prefixes"], "a causal LM: the graph should use prefixes (the check must not be vacuous)"
    got = {(s, t): v for s, t, v in graph["edges"]}
    expected = _brute_force_edges(run, ids, threshold, graph["output"]["position"], graph["output"]["token_id"])
    assert len(expected) > 100 and len(got) == graph["n_edges"]
    assert any(t.startswith("output:") for _, t in expected) and any(
        s.split(":")[0] in run.modules and t.split(":")[0] in run.modules for s, t in expected
    ), "the graph must hold component -> component and -> logit edges"
    scale = max(abs(v) for v in expected.values())
    for pair in expected.keys() | got.keys():
        assert abs(got.get(pair, 0.0) - expected.get(pair, 0.0)) <= 1e-5 * scale, pair
    nodes = {n["id"]: n for n in graph["nodes"]}
    assert all(s in nodes and t in nodes for s, t in got)
    assert graph["output"]["position"] == position
    assert graph["output"]["token_id"] == int(run_prompt(run.model, ids).target_logits[position].argmax())
    assert max(n["position"] for n in graph["nodes"]) == position  # nothing after the output's position


def test_graph_pruning_keeps_the_strongest_edges_up_to_the_fraction_and_the_logits_inputs(served) -> None:
    _, client, _ = served
    full = _ok(client.post("/api/graph", json={"text": PROMPT, "keep_fraction": 1.0, "max_edges": 200_000}))
    ranking = full["edges"]  # every non-zero edge, strongest first
    assert len(ranking) == full["n_edges"] and [abs(e[2]) for e in ranking] == sorted(
        (abs(e[2]) for e in ranking), reverse=True
    )
    output = f"output:{full['output']['token_id']}@{full['output']['position']}"
    into_output = [e for e in ranking if e[1] == output][:10]
    assert len(into_output) == 10

    def expected(n: int) -> list[list]:
        return ranking[:n] + [e for e in into_output if e not in ranking[:n]]

    half = _ok(client.post("/api/graph", json={"text": PROMPT, "keep_fraction": 0.5, "max_edges": 200_000}))
    cumulative = itertools.accumulate(abs(e[2]) for e in ranking)  # the smallest prefix carrying half the total
    n = next(i for i, c in enumerate(cumulative, start=1) if c >= 0.5 * full["total_abs"])
    assert half["edges"] == expected(n)
    capped = _ok(client.post("/api/graph", json={"text": PROMPT, "keep_fraction": 1.0, "max_edges": 7}))
    assert capped["edges"] == expected(7)
    kept_nodes = {n["id"] for n in capped["nodes"]}
    assert kept_nodes == {x for e in capped["edges"] for x in e[:2]} | {output}


def test_switching_off_active_components_at_a_position_equals_a_direct_masked_forward(served) -> None:
    run, client, _ = served
    ids = run.encode(PROMPT)
    view = _ok(client.post("/api/prompt", json={"token_ids": ids, "top_k": 5}))
    position = len(ids) // 2
    active = [key for key, ci in view["positions"][position]["active"]]
    assert active and all(ci > run.ci_threshold for _, ci in view["positions"][position]["active"])
    changes = [{"key": key, "position": position, "action": "off"} for key in active]
    got = _ok(client.post("/api/intervene", json={"token_ids": ids, "changes": changes, "top_k": 5}))

    ci = run_prompt(run.model, ids).ci
    masks = {m: c.clone() for m, c in ci.items()}
    for key in active:
        module, _, index = key.rpartition(":")
        masks[module][position, int(index)] = 0.0
    with torch.no_grad():
        direct = run.model(torch.tensor([ids]), ci_mask_infos({m: v[None] for m, v in masks.items()}))[0]
    probs = torch.softmax(direct.double(), -1)
    for p, entry in enumerate(got["positions"]):
        top_ids = [t for t, _ in entry["intervened"]]
        assert top_ids == probs[p].topk(5).indices.tolist()
        assert [pr for _, pr in entry["intervened"]] == pytest.approx(probs[p].topk(5).values.tolist(), abs=1e-5)
        if p < position:  # a causal model: earlier positions do not see the change
            assert entry["kl_base"] == pytest.approx(0.0, abs=1e-9)
    assert got["positions"][position]["kl_base"] > 1e-6  # the change did something where it was made
    assert got["positions"][position]["base"] == view["positions"][position]["masked"]

    history = _ok(client.get("/api/interventions"))
    assert history[-1]["id"] == got["id"] and history[-1]["changes"] == changes


def test_prompt_view_lists_active_components_with_labels_and_both_predictions(served) -> None:
    run, client, _ = served
    view = _ok(client.post("/api/prompt", json={"text": PROMPT}))
    assert "".join(t["text"] for t in view["tokens"]) == PROMPT  # leading spaces kept in the token texts
    ci = run_prompt(run.model, [t["id"] for t in view["tokens"]]).ci
    for p, entry in enumerate(view["positions"]):
        expected = {
            f"{m}:{c}" for m, values in ci.items() for c in (values[p] > run.ci_threshold).nonzero().flatten().tolist()
        }
        assert {key for key, _ in entry["active"]} == expected
        assert len(entry["target"]) == len(entry["masked"]) == 5 and entry["kl_masked"] >= 0
    labelled = [facts for facts in view["components"].values() if facts and facts["label"]]
    assert labelled, "the heuristic autointerp labelled the run's components: the view should show those labels"
    assert set(view["token_texts"]) >= {str(t) for e in view["positions"] for t, _ in e["target"]}


def test_component_panel_is_the_reports_detail(served) -> None:
    run, client, _ = served
    key = next(iter(run.panels.details))
    panel = _ok(client.get(f"/api/components/{key}"))
    assert panel["detail"]["key"] == key and panel["detail"]["examples"]["top"]
    example_tokens = {str(t) for ex in panel["detail"]["examples"]["top"] for t in ex[0]}
    assert example_tokens <= set(panel["tokens"])
    assert client.get("/api/components/no.such.module:3").status_code == 404


def test_bad_requests_are_refused_with_a_reason(served) -> None:
    _, client, _ = served
    cases = [
        ({"text": ""}, "empty"),
        ({}, "exactly one"),
        ({"token_ids": [10**9]}, "vocabulary"),
        ({"text": " the" * 500}, "windows of"),
    ]
    for body, reason in cases:
        response = client.post("/api/prompt", json=body)
        assert response.status_code == 422 and reason in response.text, (body, response.text)
    bad_change = {"text": PROMPT, "changes": [{"key": "layers.0.mlp.up_proj:9999"}]}
    assert client.post("/api/intervene", json=bad_change).status_code == 422
    assert client.post("/api/graph", json={"text": PROMPT, "position": 999}).status_code == 422


def test_serving_writes_nothing_under_stages(served) -> None:
    run, client, before = served
    _ok(client.post("/api/graph", json={"text": PROMPT}))
    assert _files(run.run_dir / "stages") == before
    assert [p.name.startswith("panels-") for p in (run.run_dir / "serve").iterdir()] == [True]


def test_token_is_checked_on_every_request(served) -> None:
    run, _, _ = served
    client = TestClient(create_app(run, token="s3cret"))
    assert client.get("/api/run").status_code == 401
    assert client.get("/api/run", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/", params={"token": "s3cret"}).status_code == 200
    assert client.get("/api/run", headers={"Authorization": "Bearer s3cret"}).json()["run_id"] == run.run_id
    assert client.post("/api/prompt", json={"text": PROMPT}).status_code == 401
    assert client.get("/api/run", headers={"Authorization": "bearer s3cret"}).status_code == 200  # any case
    assert client.get("/api/run", params={"token": "s3cret"}).status_code == 200
    with pytest.raises(ValueError, match="--token"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", "s3cret")
    check_bind("127.0.0.1", None)


def test_a_loopback_app_refuses_other_host_names(served) -> None:
    """DNS rebinding: a page elsewhere that resolves its own name to 127.0.0.1 names itself in Host."""
    run, _, _ = served
    client = TestClient(create_app(run, allowed_hosts=["127.0.0.1", "localhost"]), base_url="http://127.0.0.1:8000")
    assert client.get("/api/run").status_code == 200
    assert client.get("/api/run", headers={"Host": "evil.example:8000"}).status_code == 400


def test_serve_command_refuses_what_it_cannot_do_with_a_reason(serve_run) -> None:
    run_dir, _ = serve_run
    result = run_cli("serve", run_dir, "--host", "0.0.0.0", cwd=run_dir.parent)
    assert result.returncode == 2 and "--token" in result.stderr and "Traceback" not in result.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        result = run_cli("serve", run_dir, "--port", str(busy.getsockname()[1]), cwd=run_dir.parent)
    assert result.returncode == 2 and "in use" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (run_dir / "serve" / "server.json").exists()
    if not torch.cuda.is_available():
        result = run_cli("serve", run_dir, "--device", "cuda", cwd=run_dir.parent)
        assert result.returncode == 2 and "CUDA" in result.stderr and "Traceback" not in result.stderr


def test_serve_command_serves_until_interrupted(serve_run) -> None:
    """The real command: uvicorn on a free port, RUN/serve/server.json while it runs, gone after Ctrl-C."""
    run_dir, _ = serve_run
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "run.py"), "serve", str(run_dir), "--port", str(port)],
        cwd=run_dir.parent,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    server_file = run_dir / "serve" / "server.json"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the server did not come up"
            try:
                info = httpx.get(f"http://127.0.0.1:{port}/api/run", timeout=2).json()
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert info["run_id"] == "srv"
        assert json.loads(server_file.read_text())["port"] == port
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode in (0, -signal.SIGINT), err
    assert f"http://127.0.0.1:{port}/" in out and "Traceback" not in err
    assert not server_file.exists()
    assert os.environ.get("SPD_SERVE_TOKEN") is None  # the command read no token from this test's environment

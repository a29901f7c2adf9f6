"""Importing runs made by the reference implementation (goodfire-ai/spd): every fixture run, moved away from
where it was made, imports and reproduces the probe.npz the reference computed on it (tolerance of the
acceptance: max |difference| <= 1e-5 x max(1, max |value|) per array, float32)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from spd.interop.importer import import_reference_run
from spd.interop.paths import ReferencePathError, resolve_reference_path
from spd.interop.probe import compare_probes, probe
from spd.interop.probe import main as probe_main
from spd.interop.source import ReferenceImportError, source_digest
from spd.models import load_decomposition
from spd.targets.pretrain_names import UnsupportedReferenceModelError
from tests.conftest import REPO_ROOT, run_cli

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "reference_runs"
RUNS = ["tms_5-2", "tms_5-2-id", "lm_llama_mlp_layerwise", "lm_llama_mlp_global", "hf_gpt2_layerwise"]
TOLERANCE = 1e-5


def reference_probe(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / name / "probe.npz") as f:
        return {k: f[k] for k in f.files}


def moved_copy(name: str, into: Path) -> Path:
    """The fixture run copied elsewhere: its recorded absolute paths no longer exist."""
    dst = into / f"moved-{name}"
    shutil.copytree(FIXTURES / name, dst)
    return dst


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every fixture imported once from a moved copy, which is deleted afterwards (the import stands alone)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("imports")
    out = {}
    for name in RUNS:
        src = moved_copy(name, root)
        out[name] = import_reference_run(src, root / name, log=lambda _: None)
        shutil.rmtree(src)
    return out


@pytest.mark.parametrize("name", RUNS)
def test_imported_run_reproduces_reference_probe(imported: dict[str, Path], name: str) -> None:
    ref = reference_probe(name)
    errors = compare_probes(probe(load_decomposition(imported[name]), ref), ref)
    assert set(errors) == set(ref)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOLERANCE, f"{worst}: {errors[worst]:.3g}"


def test_imported_decomposition_keeps_reference_module_paths_and_records_provenance(imported) -> None:
    gpt2 = load_decomposition(imported["hf_gpt2_layerwise"])
    assert (
        gpt2.target_module_paths
        == json.loads((FIXTURES / "hf_gpt2_layerwise/probe_meta.json").read_text())["module_order"]
    )
    glob = load_decomposition(imported["lm_llama_mlp_global"])
    assert glob.target_module_paths[:2] == ["h.0.mlp.down_proj", "h.1.mlp.down_proj"]
    assert glob.ci_fn._global.blocks == [["h.1.mlp.down_proj", "h.1.mlp.c_fc"], ["h.0.mlp.down_proj", "h.0.mlp.c_fc"]]
    record = json.loads((imported["tms_5-2"] / "import.json").read_text())
    assert record["step"] == 2000  # the run's files and the target's architecture file, with sha256
    assert set(record["files"]) == {"final_config.yaml", "model_2000.pth", "tms_train_config.yaml"}
    assert (imported["lm_llama_mlp_layerwise"] / "target" / "tokenizer.json").is_file()
    assert (imported["tms_5-2"] / "reference" / "final_config.yaml").is_file()


def test_rename_only_global_ci_conversion_fails_the_probe(imported, tmp_path: Path) -> None:
    """The same keys and tensors with the block members in name order (what a rename-only conversion gives):
    strict loading succeeds and the CIs are wrong."""
    broken = tmp_path / "by-name"
    shutil.copytree(imported["lm_llama_mlp_global"], broken)
    config = json.loads((broken / "config.json").read_text())
    config["spd"]["ci_fn"]["member_order"] = "name"
    (broken / "config.json").write_text(json.dumps(config))
    model = load_decomposition(broken)  # loads with strict=True: nothing warns
    assert model.ci_fn._global.blocks[0] == ["h.1.mlp.c_fc", "h.1.mlp.down_proj"]
    ref = reference_probe("lm_llama_mlp_global")
    errors = compare_probes(probe(model, ref), ref)
    assert errors["target_out"] <= TOLERANCE  # the target is untouched ...
    assert max(errors[k] for k in errors if k.startswith("ci_pre_sigmoid/")) > 0.1  # ... the CIs are not


def test_cli_import_and_probe_module(tmp_path: Path) -> None:
    src = moved_copy("tms_5-2", tmp_path)
    result = run_cli("import-reference", src, tmp_path / "dec", cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "decomposition:" in result.stdout
    rc = probe_main(
        [str(tmp_path / "dec"), "--inputs", str(FIXTURES / "tms_5-2/probe.npz"), "--out", str(tmp_path / "o.npz")]
    )
    assert rc == 0
    with np.load(tmp_path / "o.npz") as f:
        ours = {k: f[k] for k in f.files}
    errors = compare_probes(ours, reference_probe("tms_5-2"))
    assert max(errors.values()) <= TOLERANCE
    again = run_cli("import-reference", src, tmp_path / "dec", cwd=tmp_path)  # never over an existing import
    assert again.returncode == 2 and "not empty" in again.stderr and "Traceback" not in again.stderr


def test_probe_draws_missing_masks_like_the_reference(imported) -> None:
    ref = reference_probe("tms_5-2")
    only_input = {"input": ref["input"]}
    ours = probe(load_decomposition(imported["tms_5-2"]), only_input)
    assert np.array_equal(ours["mask/linear1"], ref["mask/linear1"])
    assert np.array_equal(ours["delta_mask/linear2"], ref["delta_mask/linear2"])


def test_missing_target_exits_2_naming_the_field_and_target_override(tmp_path: Path) -> None:
    src = moved_copy("lm_llama_mlp_layerwise", tmp_path)
    shutil.move(src / "target", tmp_path / "elsewhere")
    result = run_cli("import-reference", src, tmp_path / "dec", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "pretrained_model_name" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "dec").exists()  # a failed import leaves nothing behind
    ckpt = tmp_path / "elsewhere" / "checkpoints" / "model_step_299.pt"
    result = run_cli("import-reference", src, tmp_path / "dec", "--target", ckpt, cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    assert load_decomposition(tmp_path / "dec").module_to_c["h.0.mlp.c_fc"] == 48


def test_paths_resolve_relative_to_the_run_then_by_file_name(tmp_path: Path) -> None:
    run = moved_copy("tms_5-2", tmp_path)
    assert resolve_reference_path("target/tms.pth", run, "f") == run / "target" / "tms.pth"
    gone = "/nonexistent/machine/spd_out/train/t-d71fd90c/tms.pth"
    assert resolve_reference_path(gone, run, "f") == run / "tms.pth"  # the shallowest file of that name
    with pytest.raises(ReferencePathError, match="pretrained_model_path.*nowhere.pth"):
        resolve_reference_path("/x/nowhere.pth", run, "pretrained_model_path")


def test_wandb_names_use_the_cache_or_say_what_to_download(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SPD_PIPELINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    run = moved_copy("tms_5-2", tmp_path)
    name = "wandb:goodfire/spd-pre-Sep-2025/runs/0hsp07o4"
    cache = tmp_path / "cache" / "wandb" / "goodfire" / "spd-pre-Sep-2025" / "0hsp07o4"
    with pytest.raises(ReferencePathError, match="wandb is not installed") as err:
        resolve_reference_path(name, run, "pretrained_model_path")
    assert str(cache) in str(err.value)
    cache.mkdir(parents=True)
    shutil.copy(run / "target" / "tms.pth", cache)
    shutil.copy(run / "target" / "tms_train_config.yaml", cache)
    assert resolve_reference_path(name, run, "pretrained_model_path") == cache
    config = yaml.safe_load((run / "final_config.yaml").read_text())
    config["pretrained_model_path"] = name
    (run / "final_config.yaml").write_text(yaml.safe_dump(config))
    shutil.rmtree(run / "target")
    (run / "tms.pth").unlink()
    dest = import_reference_run(run, tmp_path / "dec", log=lambda _: None)
    assert json.loads((dest / "config.json").read_text())["target_info"]["target_file"].startswith(str(cache))


def test_unsupported_model_class_is_refused_by_name(tmp_path: Path) -> None:
    run = moved_copy("tms_5-2", tmp_path)
    config = yaml.safe_load((run / "final_config.yaml").read_text())
    config["pretrained_model_class"] = "spd.experiments.ih.model.InductionTransformer"
    (run / "final_config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(UnsupportedReferenceModelError, match="InductionTransformer"):
        import_reference_run(run, tmp_path / "dec", log=lambda _: None)
    result = run_cli("import-reference", run, tmp_path / "dec2", cwd=tmp_path)
    assert result.returncode == 2 and "InductionTransformer" in result.stderr and "Traceback" not in result.stderr


def test_not_a_reference_run_and_source_digest(tmp_path: Path) -> None:
    with pytest.raises(ReferenceImportError, match="final_config.yaml missing"):
        import_reference_run(tmp_path, tmp_path / "dec", log=lambda _: None)
    run = moved_copy("tms_5-2", tmp_path)
    before = source_digest(run)
    assert source_digest(run / "model_2000.pth") == before
    (run / "final_config.yaml").write_text((run / "final_config.yaml").read_text() + "\n# edited\n")
    assert source_digest(run) != before


def _reference_resid_mlp_run(root: Path) -> Path:
    """A run in the reference's layout for a shape no fixture has: its residual MLP (biases, GELU, a learned
    W_U), an inserted identity, an `mlp` CI function with two hidden layers. Weights are random; the layout is
    what the reference writes (Sequential CI layers at even indices, identities without parameters)."""
    from spd.targets.reference_resid_mlp import ReferenceResidMLPConfig, ReferenceResidMLPModel

    torch.manual_seed(3)
    arch = {"n_features": 6, "d_embed": 8, "d_mlp": 5, "n_layers": 2, "act_fn_name": "gelu", "in_bias": True}
    arch["out_bias"] = True
    target = ReferenceResidMLPModel(ReferenceResidMLPConfig(**arch))
    for p in target.parameters():
        torch.nn.init.normal_(p, std=0.5)
    run = root / "resid_run"
    (run / "target").mkdir(parents=True)
    torch.save(target.state_dict(), run / "target" / "resid_mlp.pth")
    (run / "target" / "resid_mlp_train_config.yaml").write_text(yaml.safe_dump({"resid_mlp_model_config": arch}))
    config = yaml.safe_load((FIXTURES / "tms_5-2" / "final_config.yaml").read_text())
    config.update(
        pretrained_model_class="spd.experiments.resid_mlp.models.ResidMLP",
        pretrained_model_path="/machine/that/made/it/resid_mlp.pth",
        module_info=[{"module_pattern": "layers.*.mlp_out", "C": 4}, {"module_pattern": "layers.*.mlp_in", "C": 7}],
        identity_module_info=[{"module_pattern": "layers.1.mlp_in", "C": 3}],
        ci_config={"mode": "layerwise", "fn_type": "mlp", "hidden_dims": [5, 3]},
        task_config={"task_name": "resid_mlp", "feature_probability": 0.1},
        eval_metric_configs=[],
    )
    (run / "final_config.yaml").write_text(yaml.safe_dump(config))
    state = {f"target_model.{k}": v for k, v in target.state_dict().items()}
    order = [
        "layers.0.mlp_out",
        "layers.1.mlp_out",
        "layers.0.mlp_in",
        "layers.1.mlp_in",
        "layers.1.mlp_in.pre_identity",
    ]
    for m, (d_in, d_out, c) in zip(order, [(5, 8, 4), (5, 8, 4), (8, 5, 7), (8, 5, 7), (8, 8, 3)], strict=True):
        k = m.replace(".", "-")
        state[f"_components.{k}.V"], state[f"_components.{k}.U"] = torch.randn(d_in, c), torch.randn(c, d_out)
        if not m.endswith("pre_identity"):
            state[f"_components.{k}.bias"] = target.get_submodule(m).bias.detach().clone()
        for i, (a, b) in enumerate([(1, 5), (5, 3), (3, 1)]):
            state[f"ci_fn._ci_fns.{k}.layers.{2 * i}.W"] = torch.randn(c, a, b)
            state[f"ci_fn._ci_fns.{k}.layers.{2 * i}.b"] = torch.randn(c, b)
    torch.save(state, run / "model_7.pth")
    return run


def test_resid_mlp_run_with_identity_insertion_and_deep_ci_imports_by_the_formulas(tmp_path: Path) -> None:
    run = _reference_resid_mlp_run(tmp_path)
    model = load_decomposition(import_reference_run(run, tmp_path / "dec", log=lambda _: None))
    assert model.target_module_paths == [
        "layers.0.mlp_out", "layers.1.mlp_out", "layers.0.mlp_in", "layers.1.mlp_in", "layers.1.mlp_in.pre_identity"
    ]  # fmt: skip
    state = torch.load(run / "model_7.pth", weights_only=True)
    sd = {k.removeprefix("target_model."): v for k, v in state.items() if k.startswith("target_model.")}
    gelu = torch.nn.functional.gelu
    x = torch.randn(9, 6)
    resid = x @ sd["W_E"]
    acts: dict[str, torch.Tensor] = {}
    for i in range(2):
        acts[f"layers.{i}.mlp_in"] = resid
        mid = gelu(resid @ sd[f"layers.{i}.mlp_in.weight"].T + sd[f"layers.{i}.mlp_in.bias"])
        acts[f"layers.{i}.mlp_out"] = mid
        resid = resid + mid @ sd[f"layers.{i}.mlp_out.weight"].T + sd[f"layers.{i}.mlp_out.bias"]
    acts["layers.1.mlp_in.pre_identity"] = acts["layers.1.mlp_in"]
    ours = probe(model, {"input": x.numpy()})
    assert np.allclose(ours["target_out"], (resid @ sd["W_U"]).numpy(), atol=1e-5)
    for m, a in acts.items():
        k = m.replace(".", "-")
        h = (a @ state[f"_components.{k}.V"]).unsqueeze(-1)  # per-component scalar MLP on x V
        for i in range(3):
            w, b = state[f"ci_fn._ci_fns.{k}.layers.{2 * i}.W"], state[f"ci_fn._ci_fns.{k}.layers.{2 * i}.b"]
            h = torch.einsum("bci,cio->bco", h, w) + b
            h = gelu(h) if i < 2 else h
        assert np.allclose(ours[f"pre_weight_acts/{m}"], a.numpy(), atol=1e-5)
        assert np.allclose(ours[f"ci_pre_sigmoid/{m}"], h.squeeze(-1).numpy(), atol=1e-4)


def test_older_reference_key_spellings_are_renamed_as_the_reference_does() -> None:
    from spd.interop.state_dict import modernize_key

    assert modernize_key("patched_model.linear1.original.weight") == "target_model.linear1.weight"
    assert modernize_key("target_model.h.0.mlp.c_fc.components.V") == "_components.h-0-mlp-c_fc.V"
    assert modernize_key("_gates.linear1.layers.0.W") == "ci_fn._ci_fns.linear1.layers.0.W"
    assert modernize_key("ci_fn._gates.linear1.layers.2.b") == "ci_fn._ci_fns.linear1.layers.2.b"
    today = "ci_fn._global_ci_fn._readers.layer_1_mlp.2.W"
    assert modernize_key(today) == today


def test_wandb_run_names_in_every_form_the_reference_accepts() -> None:
    from spd.interop.paths import looks_like_hub_id, parse_wandb_run

    expected = ("goodfire", "spd", "t-9d2b8f02")
    for name in (
        "wandb:goodfire/spd/runs/t-9d2b8f02",
        "wandb:goodfire/spd/t-9d2b8f02",
        "goodfire/spd/runs/t-9d2b8f02",
        "https://wandb.ai/goodfire/spd/runs/t-9d2b8f02?nw=1",
    ):
        assert parse_wandb_run(name) == expected, name
    assert parse_wandb_run("target/checkpoints/model_step_299.pt") is None
    assert parse_wandb_run("SimpleStories/SimpleStories") is None and looks_like_hub_id("SimpleStories/SimpleStories")
    assert not looks_like_hub_id("./tokenizer") and not looks_like_hub_id("goodfire/spd/runs/t-9d2b8f02")


def test_pretrain_target_in_the_flat_layout_of_its_wandb_upload(tmp_path: Path) -> None:
    """model_step_<N>.pt beside model_config.yaml (how the reference uploads a pretrain run) loads too."""
    src = moved_copy("lm_llama_mlp_layerwise", tmp_path)
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in ("model_config.yaml", "tokenizer.json", "checkpoints/model_step_299.pt"):
        shutil.copy(src / "target" / f, flat)
    shutil.rmtree(src / "target")
    dest = import_reference_run(src, tmp_path / "dec", target_path=flat, log=lambda _: None)
    ref = reference_probe("lm_llama_mlp_layerwise")
    assert max(compare_probes(probe(load_decomposition(dest), ref), ref).values()) <= TOLERANCE


def test_unreadable_inputs_exit_2_without_traceback_and_leave_nothing(tmp_path: Path) -> None:
    src = moved_copy("tms_5-2", tmp_path)
    (src / "model_2000.pth").write_bytes(b"not a checkpoint")
    result = run_cli("import-reference", src, tmp_path / "dec", cwd=tmp_path)
    assert result.returncode == 2 and "model_2000.pth" in result.stderr and "Traceback" not in result.stderr
    shutil.copy(FIXTURES / "tms_5-2" / "model_2000.pth", src)
    (src / "target" / "tms_train_config.yaml").write_text("tms_model_config: {n_features: 5}\n")
    (src / "tms_train_config.yaml").write_text("tms_model_config: {n_features: 5}\n")
    result = run_cli("import-reference", src, tmp_path / "dec", cwd=tmp_path)
    assert result.returncode == 2 and "n_hidden" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "dec").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".dec")]


def test_model_file_outside_the_run_dir_and_output_attr_refused(tmp_path: Path) -> None:
    src = moved_copy("tms_5-2", tmp_path)
    shutil.move(src / "model_2000.pth", tmp_path / "model_2000.pth")
    dest = import_reference_run(src, tmp_path / "dec", model_file=tmp_path / "model_2000.pth", log=lambda _: None)
    record = json.loads((dest / "import.json").read_text())
    assert str((tmp_path / "model_2000.pth").resolve()) in record["files"]
    config = yaml.safe_load((src / "final_config.yaml").read_text())
    config["pretrained_model_output_attr"] = "idx_1"
    (src / "final_config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(UnsupportedReferenceModelError, match="idx_1"):
        import_reference_run(src, tmp_path / "dec2", model_file=tmp_path / "model_2000.pth", log=lambda _: None)


def test_source_digest_follows_the_target_architecture_file(tmp_path: Path) -> None:
    run = moved_copy("lm_llama_mlp_global", tmp_path)
    before = source_digest(run)
    config = run / "target" / "model_config.yaml"
    config.write_text(config.read_text() + "\n# edited\n")
    assert source_digest(run) != before

"""`radixflow bench grammar` plumbing (no backend runs here: that is the bench's job)."""

from __future__ import annotations

import argparse

from runtime.bench import grammar


def test_subset_names():
    assert grammar.subset_of("Github_easy---o10088.json") == "Github_easy"
    assert grammar.subset_of("Kubernetes---kb_738_Normalized.json") == "Kubernetes"
    assert grammar.subset_of("BFCL_parallel_multiple_12.json") == "BFCL_parallel_multiple"
    assert grammar.subset_of("Glaiveai2K_3.json") == "Glaiveai2K"


def test_select_files_limits_per_subset(tmp_path):
    for name in ["A---1.json", "A---2.json", "A---3.json", "B_1.json", "B_2.json"]:
        (tmp_path / name).write_text("{}")
    groups = grammar.select_files(tmp_path, None, limit=2, seed=0)
    assert {k: len(v) for k, v in groups.items()} == {"A": 2, "B": 2}
    assert list(grammar.select_files(tmp_path, ["B"], None, 0)) == ["B"]


def test_summary_and_markdown():
    results = [
        {"status": "ok", "compile_ms": 2.0, "fill_us": [10.0, 30.0],
         "tests": [(True, True, True), (False, True, True)]},
        {"status": "ok", "compile_ms": 4.0, "fill_us": [20.0], "tests": [(True, False, False), (False, False, False)]},
        {"status": "unsupported"}, {"status": "timeout"},
    ]
    s = grammar.summarize(results)
    assert (s["schemas"], s["compiled"], s["unsupported"], s["timeout"]) == (4, 2, 1, 1)
    assert s["compile_ms_median"] == 3.0 and s["mask_us_median"] == 20.0
    assert (s["valid_accepted"], s["valid_total"], s["invalid_rejected"], s["invalid_total"]) == (1, 2, 1, 2)
    md = grammar.markdown({"command": "x", "machine": "y", "results": {"llguidance": {"ALL": s}}})
    assert "| llguidance | ALL | 2/4 |" in md


def test_missing_data_prints_a_message(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RADIXFLOW_SHARED_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setattr(grammar, "REPO_ROOT", tmp_path)
    sub = argparse.ArgumentParser().add_subparsers()
    grammar.add_parser(sub)
    args = sub.choices["grammar"].parse_args(["--limit", "1"])
    args.func(args)
    assert "maskbench-dev not found" in capsys.readouterr().out


def _result(kind: str, text: str = "", message: str | None = None) -> dict:
    return {"text": text, "meta_info": {"finish_reason": {"type": kind, "message": message}}}


def test_generate_outcomes():
    from runtime.bench.grammar_generate import _outcome

    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    assert _outcome(_result("stop", '{"a":1}'), schema) == ("valid", None)
    assert _outcome(_result("stop", '{"a":"x"}'), schema)[0] == "invalid"
    assert _outcome(_result("stop", '{"a":'), schema)[0] == "invalid"  # not JSON
    assert _outcome(_result("length", '{"a":'), schema) == ("length", None)
    assert _outcome(_result("abort", message="cannot enforce: format"), schema) == ("refused", "cannot enforce: format")


def test_generate_sweep_on_two_schemas(tmp_path):
    """The real engine (tiny model, llguidance) on two maskbench schemas from two subsets:
    every request is accounted for, every output that stopped validates, and the partial
    result is handed out after each subset."""
    import pytest

    from runtime.bench.grammar_generate import sweep_backend
    from runtime.demo.checkpoint import demo_model_path

    folder = grammar.data_dir(None)
    if folder is None:
        pytest.skip("maskbench-dev data not found (../shared/data/maskbench-dev)")
    groups = grammar.select_files(folder, ["Github_easy", "Kubernetes"], limit=1, seed=0)
    partials = []
    out = sweep_backend("llguidance", groups, str(demo_model_path("qwen2", "tiny", "float32")),
                        max_new_tokens=64, compile_timeout=30.0, batch=4,
                        on_subset=lambda partial: partials.append(partial["ALL"]["requests"]))
    assert partials == [2, 4]
    total = out["ALL"]
    assert total["requests"] == 4
    assert total["refused"] + total["length"] + total["valid"] + total["invalid"] + total["unchecked"] == 4
    assert total["invalid"] == 0 and out["invalid"] == []

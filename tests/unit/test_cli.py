"""`radixflow serve` flags: one for every EngineConfig field (generated from it), passed
through unchanged."""

import argparse
import dataclasses

from runtime.config import EngineConfig, add_engine_args, engine_options


def test_every_engine_option_has_a_flag():
    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    flags = {action.dest for action in parser._actions}
    missing = {f.name for f in dataclasses.fields(EngineConfig)} - flags - {"extra"}
    assert not missing, f"EngineConfig fields without a serve flag: {sorted(missing)}"


def test_grammar_flags_reach_the_engine_config():
    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    args = parser.parse_args(["--grammar-backend", "outlines", "--grammar-compile-timeout-s", "5",
                              "--disable-jump-forward", "--speculative-algorithm", "suffix",
                              "--speculative-num-draft-tokens", "3"])
    cfg = EngineConfig(**engine_options(args))
    assert (cfg.grammar_backend, cfg.grammar_compile_timeout_s, cfg.disable_jump_forward) == ("outlines", 5.0, True)
    assert (cfg.speculative_algorithm, cfg.speculative_num_draft_tokens) == ("suffix", 3)
    defaults = EngineConfig(**engine_options(parser.parse_args([])))
    assert (defaults.grammar_backend, defaults.disable_jump_forward, defaults.speculative_algorithm) == (
        "auto", False, "none")


def test_serve_refuses_unloadable_models_with_one_line(tmp_path):
    """A model that cannot load ends `radixflow serve` with exit 1 and a message naming
    what is wrong (an unsupported GGUF architecture; a path that is no checkpoint)."""
    import subprocess
    import sys

    from tests.gguf_files import write_bare_gguf

    for path, message in [(write_bare_gguf(tmp_path / "phi.gguf", "phi3"), "GGUF architecture 'phi3' is not supported"),
                          (tmp_path / "missing", "is neither a Hugging Face checkpoint directory")]:
        proc = subprocess.run([sys.executable, "-m", "runtime.cli", "serve", "--model-path", str(path),
                               "--port", "0"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines()[-1].startswith("radixflow serve: cannot start the engine: ")
        assert message in proc.stderr

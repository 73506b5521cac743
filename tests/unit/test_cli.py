"""`radixflow serve` flags: one for every EngineConfig field, passed through unchanged."""

import argparse
import dataclasses

from runtime.cli import add_engine_args, engine_options
from runtime.config import EngineConfig


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
                              "--enable-jump-forward"])
    cfg = EngineConfig(**engine_options(args))
    assert (cfg.grammar_backend, cfg.grammar_compile_timeout_s, cfg.enable_jump_forward) == ("outlines", 5.0, True)
    defaults = EngineConfig(**engine_options(parser.parse_args([])))
    assert (defaults.grammar_backend, defaults.enable_jump_forward) == ("auto", False)

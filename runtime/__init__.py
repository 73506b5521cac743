"""Radixflow: a structured-generation runtime (import package `runtime`)."""

from runtime.core import SamplingParams

__all__ = ["Engine", "SamplingParams"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # heavy imports (torch, transformers) only when used
    if name == "Engine":
        from runtime.engine.api import Engine

        return Engine
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")

"""Radixflow: a structured-generation runtime (import package `runtime`).

`runtime.Engine` is the offline engine; the frontend language (`runtime.function`,
`runtime.gen`, `runtime.select`, roles, `runtime.Runtime`, ...) is `runtime.lang`,
re-exported here so that `import runtime as rt` reads like `import sglang as sgl`."""

from runtime import lang as _lang
from runtime.core import SamplingParams
from runtime.lang import *  # noqa: F401,F403 - the frontend's names

__all__ = ["Engine", "SamplingParams", *_lang.__all__, *_lang.BACKENDS]  # noqa: F405
__version__ = "0.1.0"


def __getattr__(name: str):
    # heavy imports (torch, transformers) only when used
    if name == "Engine":
        from runtime.engine.api import Engine

        return Engine
    if name in _lang.BACKENDS:
        return getattr(_lang, name)
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")

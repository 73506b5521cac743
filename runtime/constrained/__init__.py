"""Grammar-constrained decoding (JSON schema, regex, EBNF/Lark, choices, structural tags).

Engine integration, per request:
    spec = GrammarSpec.from_sampling_params(sp)                 # None: unconstrained; GrammarError -> 400
    fut = compiler.submit(spec)                                 # GrammarCompiler(get_backend(...))
    matcher = compiler.backend.new_matcher(fut.result())        # once fut.done()
per decode step (B rows, V = model vocab):
    bitmask = allocate_bitmask(B, V)                            # reuse; all bits set
    matcher.fill_bitmask(bitmask, row)                          # constrained rows only
    apply_bitmask_(logits, bitmask.to(logits.device))           # -inf where masked
    ... sample ...; matcher.accept_token(token) ...; matcher.is_terminated()

Backends are imported lazily by name (`registry.get_backend`); importing this package
loads none of them.
"""

from runtime.constrained.base import (
                                      BOUNDED_WHITESPACE_MAX,
                                      KINDS,
                                      REASONING_END,
                                      CompiledGrammar,
                                      CompileTimeoutError,
                                      GrammarBackend,
                                      GrammarError,
                                      GrammarMatcher,
                                      GrammarSpec,
                                      InvalidSchemaError,
                                      UnsupportedSchemaError,
)
from runtime.constrained.bitmask import allocate_bitmask, apply_bitmask_, bitmask_to_bool
from runtime.constrained.compiler import GrammarCompiler
from runtime.constrained.registry import DEFAULT_BACKEND, backend_names, get_backend

__all__ = [
    "BOUNDED_WHITESPACE_MAX", "KINDS", "REASONING_END", "CompiledGrammar", "GrammarBackend", "GrammarError",
    "CompileTimeoutError", "InvalidSchemaError", "UnsupportedSchemaError",
    "GrammarMatcher", "GrammarSpec", "allocate_bitmask", "apply_bitmask_", "bitmask_to_bool",
    "GrammarCompiler", "DEFAULT_BACKEND", "backend_names", "get_backend",
]

"""Grammar backends by name, imported lazily (each pulls in a native library).

Support table (kinds; "-" = GrammarError "backend X does not support kind Y"):

    kind            xgrammar  llguidance  outlines
    json_schema     yes       yes         yes (regular subset, recursion depth 3)
    json_object     yes       yes         yes (nesting depth 3)
    regex           yes       yes         yes
    ebnf            yes       yes (GBNF -> Lark)   -
    lark            yes       yes         -
    choices         yes       yes         yes
    structural_tag  yes       yes         -
    jump-forward    yes       yes         '' (none)
    rollback        yes       yes         yes
    copy            yes       yes         yes

DEFAULT_BACKEND is llguidance, chosen by `radixflow bench grammar` on the 2,216
maskbench-dev schemas (docs/bench/grammar.md; reasoning in grammars/README.md,
"Choosing the default backend"): compile median 3.2 ms / p99 85 ms (xgrammar 27.5 ms /
17 s: it precomputes masks per grammar position; outlines on a 60-schema sample
0.5 s / > 20 s: it walks the vocabulary through a DFA); it enforces the most keywords
in strict mode (1,803 schemas vs xgrammar's 1,639) and rejected every invalid test
instance; its mask costs 25 µs median (xgrammar 12 µs), far below a decode step.
"""

from __future__ import annotations

from typing import Any

from runtime.components import GRAMMAR_BACKENDS, load
from runtime.constrained.base import GrammarBackend

DEFAULT_BACKEND = "llguidance"


def backend_names() -> list[str]:
    return list(GRAMMAR_BACKENDS)


def backend_class(name: str) -> type[GrammarBackend]:
    return load(GRAMMAR_BACKENDS, name, "grammar backend")


def get_backend(name: str, tokenizer: Any, vocab_size: int, eos_token_ids: list[int],
                **options: Any) -> GrammarBackend:
    """A backend instance for one tokenizer; building one costs ~1-5 s (vocabulary scan)."""
    return backend_class(name)(tokenizer, vocab_size, list(eos_token_ids), **options)

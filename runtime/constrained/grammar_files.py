"""Grammar files that ship with Radixflow (`grammars/*.ebnf`, `grammars/*.lark`).

    from runtime.constrained import grammar_files
    grammar_files.names()            # ['arithmetic', 'bullet_list', 'json', 'sql_select', 'tool_call']
    grammar_files.load("json")       # the EBNF text
    GrammarSpec.from_ebnf("json")    # a spec built from the shipped file

Lookup order: `runtime/constrained/grammars/` (in the repo a symlink to the top-level
`grammars/`; in a wheel, the files themselves, shipped as package data of
`runtime.constrained`), then the checkout's top-level `grammars/` (should the symlink
be missing, e.g. a checkout without symlink support). `.ebnf` files are GBNF with root
rule `root`; `.lark` files are Lark with rule `start`.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from runtime.constrained.base import GrammarError

_SUFFIX_KIND = {".ebnf": "ebnf", ".lark": "lark"}
_NAME_RE = re.compile(r"^[A-Za-z0-9_\-]+(\.(ebnf|lark))?$")


@lru_cache(maxsize=1)
def grammars_dir() -> Path:
    here = Path(__file__).resolve().parent  # runtime/constrained
    for candidate in (here / "grammars", here.parent.parent / "grammars"):
        if candidate.is_dir():
            return candidate
    raise GrammarError("the grammars/ folder is missing from this installation")


def _files() -> dict[str, Path]:
    files = {}
    for path in sorted(grammars_dir().iterdir()):
        if path.suffix in _SUFFIX_KIND:
            files[path.stem] = path
            files[path.name] = path
    return files


def names() -> list[str]:
    return sorted({p.stem for p in _files().values()})


def is_name(text: str) -> bool:
    """True if `text` is the name of a shipped grammar (not grammar text itself)."""
    return bool(_NAME_RE.match(text.strip())) and text.strip() in _files()


def load_with_kind(name: str) -> tuple[str, str]:
    """(kind, text) of a shipped grammar: kind "ebnf" or "lark"."""
    path = _files().get(name.strip())
    if path is None:
        raise GrammarError(f"unknown grammar file {name!r}; shipped grammars: {names()}")
    return _SUFFIX_KIND[path.suffix], path.read_text(encoding="utf-8")


def load(name: str) -> str:
    return load_with_kind(name)[1]

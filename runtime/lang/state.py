"""The program state `s` and the interpreter behind `s += expr`.

A state holds the prompt text so far, the variables that `gen`/`select` filled, their
meta_info, and the chat messages its role blocks wrote. Expressions run eagerly, in the
caller's thread, through `_HANDLERS` (one method per expression type). Every piece of
text appended is also logged as (variable or None, text), which is what `text_iter`
streams while the program runs in another thread (`run(stream=True)`).

Invariant: `self._text` is exactly the prompt the next backend call sees; role markers
come from the backend's chat template (`runtime.chat_roles`), so role blocks render as
the template would render the same messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from runtime.lang.choices import resolve_method
from runtime.lang.ir import (
    DEFAULT_PARAMS,
    Concat,
    Expr,
    Gen,
    GenParams,
    RoleBegin,
    RoleEnd,
    Select,
    Text,
    VarScopeBegin,
    VarScopeEnd,
    as_expr,
    role_block,
)

HINT_PARAMS = {"max_new_tokens": 0, "temperature": 0.0}  # prefill only: puts a prefix in the radix tree


class ProgramState:
    def __init__(self, backend, params: GenParams = DEFAULT_PARAMS, stream: bool = False) -> None:
        self.backend, self.params, self.stream = backend, params, stream
        self._text = ""
        self.variables: dict[str, Any] = {}
        self.meta: dict[str, Any] = {}
        self._messages: list[dict] = []
        self._role: str | None = None
        self._role_start = 0
        self._scopes: dict[str, int] = {}
        self._cached_len = 0  # text known to be in the radix tree (sent to the backend)
        self._error: BaseException | None = None
        self._log: list[tuple[str | None, str]] = []  # every appended piece, for text_iter
        self._done = False
        self._cond = threading.Condition()

    # ---- running expressions ---------------------------------------------------------
    def __iadd__(self, expr) -> "ProgramState":
        self._run(as_expr(expr))
        return self

    def _run(self, expr: Expr) -> None:
        _HANDLERS[type(expr)](self, expr)

    def _append(self, text: str, var: str | None = None) -> None:
        with self._cond:
            self._text += text
            self._log.append((var, text))
            self._cond.notify_all()

    def _text_expr(self, expr: Text) -> None:
        self._append(expr.value)

    def _concat(self, expr: Concat) -> None:
        for item in expr.items:
            self._run(item)

    def _gen(self, expr: Gen) -> None:
        if expr.choices is not None:
            return self._select(Select(expr.name, expr.choices))
        params = self.params.merged(expr.params)
        sampling, options = params.to_engine()
        name = expr.name
        if self.stream and (params.n or 1) == 1:
            value = ""
            for delta, meta in self.backend.generate_stream(self._text, sampling, options):
                value += delta
                self._append(delta, name)
                if name is not None:
                    self.variables[name], self.meta[name] = value, meta
        else:
            results = self.backend.generate(self._text, sampling, options)
            texts, metas = [t for t, _ in results], [m for _, m in results]
            self._append(texts[0], name)
            if name is not None:
                self.variables[name] = texts if len(texts) > 1 else texts[0]
                self.meta[name] = metas if len(metas) > 1 else metas[0]
        self._cached_len = len(self._text)

    def _select(self, expr: Select) -> None:
        method = resolve_method(expr.choices_method)
        scores = self.backend.score_choices(self._text, list(expr.choices), method.needs_unconditional)
        if expr.temperature and expr.temperature > 0:  # sample by the mean logprobs
            weights = [math.exp(s.mean / expr.temperature) for s in scores]
            index = random.choices(range(len(scores)), weights)[0]
        else:
            index = method.pick(scores)
        choice = expr.choices[index]
        if expr.name is not None:
            self.variables[expr.name] = choice
            self.meta[expr.name] = {"choices_method": method.name, "choice_index": index,
                                    "normalized_prompt_logprobs": [s.mean for s in scores],
                                    "token_logprobs": [s.logprobs for s in scores]}
        self._append(choice, expr.name)
        self._cached_len = len(self._text)  # scoring prefilled prefix + every choice

    def _role_begin(self, expr: RoleBegin) -> None:
        if self._role is not None:
            raise ValueError(f"role {expr.role!r} begins inside role {self._role!r}; roles do not nest")
        roles = self.backend.chat_roles()
        if not self._messages and expr.role != "system" and not self._text:
            self._append(roles.default_system)
        self._role = expr.role
        self._append(roles.markers[expr.role][0])
        self._role_start = len(self._text)

    def _role_end(self, expr: RoleEnd) -> None:
        if self._role != expr.role:
            raise ValueError(f"role {expr.role!r} ends, but the open role is {self._role!r}")
        self._messages.append({"role": expr.role, "content": self._text[self._role_start:].strip()})
        self._role = None
        self._append(self.backend.chat_roles().markers[expr.role][1])

    def _scope_begin(self, expr: VarScopeBegin) -> None:
        self._scopes[expr.name] = len(self._text)

    def _scope_end(self, expr: VarScopeEnd) -> None:
        self.variables[expr.name] = self._text[self._scopes.pop(expr.name):]

    # ---- scopes ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _role_scope(self, role: str):
        self._run(RoleBegin(role))
        yield self
        self._run(RoleEnd(role))

    def system(self, expr=None):
        return self._role_scope("system") if expr is None else self.__iadd__(role_block("system", expr))

    def user(self, expr=None):
        return self._role_scope("user") if expr is None else self.__iadd__(role_block("user", expr))

    def assistant(self, expr=None):
        return self._role_scope("assistant") if expr is None else self.__iadd__(role_block("assistant", expr))

    @contextlib.contextmanager
    def var_scope(self, name: str):
        self._run(VarScopeBegin(name))
        yield self
        self._run(VarScopeEnd(name))

    # ---- reading ---------------------------------------------------------------------
    def __getitem__(self, name: str):
        if name not in self.variables:
            raise KeyError(f"no variable {name!r} in this program state (known: {sorted(self.variables)})")
        return self.variables[name]

    def __contains__(self, name: str) -> bool:
        return name in self.variables

    def get_var(self, name: str):
        return self[name]

    def set_var(self, name: str, value) -> None:
        self.variables[name] = value

    def text(self) -> str:
        return self._text

    def messages(self) -> list[dict]:
        """The role blocks written so far, in OpenAI message form."""
        return [dict(m) for m in self._messages]

    def get_meta_info(self, name: str):
        return self.meta.get(name)

    def error(self) -> BaseException | None:
        return self._error

    def sync(self) -> "ProgramState":
        """Wait until a streamed program has finished (a no-op otherwise)."""
        with self._cond:
            self._cond.wait_for(lambda: self._done)
        return self

    def __repr__(self) -> str:
        return f"ProgramState({self._text!r})"

    # ---- fork / copy -----------------------------------------------------------------
    def copy(self) -> "ProgramState":
        new = ProgramState(self.backend, self.params, self.stream)
        new._text, new._messages, new._role = self._text, [dict(m) for m in self._messages], self._role
        new._role_start, new._cached_len = self._role_start, self._cached_len
        new.variables, new.meta = dict(self.variables), dict(self.meta)
        new._done = True
        return new

    def fork(self, size: int = 1) -> "ForkGroup":
        """`size` branches that continue from here; `forks += expr` runs them concurrently.
        The shared text is prefilled once first, so every branch reads it from the cache."""
        if size < 1:
            raise ValueError(f"fork size must be >= 1, got {size}")
        if len(self._text) > self._cached_len:
            self.backend.generate(self._text, HINT_PARAMS, {})
            self._cached_len = len(self._text)
        return ForkGroup(self, [self.copy() for _ in range(size)])

    # ---- streaming -------------------------------------------------------------------
    def _finish(self, error: BaseException | None = None) -> None:
        with self._cond:
            self._error = error
            self._done = True
            self._cond.notify_all()

    def _next_piece(self, index: int, var: str | None) -> tuple[int, str | None]:
        """Block until log entry `index` exists (-> (index + 1, its text, or None when it is
        another variable's)) or the program is done (-> (index, None) once the log is read)."""
        with self._cond:
            self._cond.wait_for(lambda: index < len(self._log) or self._done)
            if index >= len(self._log):
                return index, None
            piece_var, text = self._log[index]
            return index + 1, text if var is None or piece_var == var else ""

    def text_iter(self, var_name: str | None = None):
        """Text as it is appended: all of it, or only what fills `var_name`."""
        index = 0
        while True:
            index, text = self._next_piece(index, var_name)
            if text is None:
                break
            if text:
                yield text
        if self._error is not None:
            raise self._error

    async def text_async_iter(self, var_name: str | None = None, return_meta_data: bool = False):
        """`text_iter` for asyncio; with return_meta_data, (text, meta_info of var) pairs."""
        index = 0
        while True:
            index, text = await asyncio.to_thread(self._next_piece, index, var_name)
            if text is None:
                break
            if text:
                yield (text, self.meta.get(var_name)) if return_meta_data else text
        if self._error is not None:
            raise self._error


class ForkGroup:
    """Branches of `s.fork(n)`."""

    def __init__(self, parent: ProgramState, states: list[ProgramState]) -> None:
        self.parent, self.states = parent, states
        self.names_before = set(parent.variables)  # join gathers the variables made after the fork

    def __len__(self) -> int:
        return len(self.states)

    def __iter__(self):
        return iter(self.states)

    def __getitem__(self, i: int) -> ProgramState:
        return self.states[i]

    def __setitem__(self, i: int, value) -> None:  # `forks[i] += ...` assigns the same state back
        if value is not self.states[i]:
            raise ValueError("fork branches cannot be replaced")

    def __iadd__(self, expr) -> "ForkGroup":
        exprs = [expr(i) if callable(expr) else expr for i in range(len(self.states))]
        with ThreadPoolExecutor(len(self.states)) as pool:
            list(pool.map(lambda pair: pair[0].__iadd__(pair[1]), zip(self.states, exprs)))
        return self

    def join(self, mode: str = "gather_variable") -> None:
        """gather_variable: each variable a branch made becomes a list in the parent;
        concate_and_append: the branches' new text is appended to the parent, in order."""
        if mode == "gather_variable":
            for state in self.states:
                for name in set(state.variables) - self.names_before:
                    self.parent.variables.setdefault(name, []).append(state.variables[name])
                    self.parent.meta.setdefault(name, []).append(state.meta.get(name))
        elif mode == "concate_and_append":
            start = len(self.parent.text())
            for state in self.states:
                self.parent._append(state.text()[start:])
        else:
            raise ValueError(f"join mode must be gather_variable or concate_and_append, got {mode!r}")


_HANDLERS = {
    Text: ProgramState._text_expr, Concat: ProgramState._concat, Gen: ProgramState._gen,
    Select: ProgramState._select, RoleBegin: ProgramState._role_begin, RoleEnd: ProgramState._role_end,
    VarScopeBegin: ProgramState._scope_begin, VarScopeEnd: ProgramState._scope_end,
}

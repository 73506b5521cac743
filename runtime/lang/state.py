"""The program state `s` and the interpreter behind `s += expr`.

A state holds the prompt text so far, the variables that `gen`/`select` filled, their
meta_info, and the chat messages its role blocks wrote. Expressions run eagerly, in the
caller's thread, through `_HANDLERS` (one method per expression type). Every piece of
text appended is also logged as (variable or None, text), which is what `text_iter`
streams while the program runs in another thread (`run(stream=True)`).

Invariant: `self._text` is exactly the prompt the next backend call sees; role markers
come from the backend's chat template (`runtime.chat_roles`), so role blocks render as
the template would render the same messages. The one exception to "text only grows":
`gen(tools=...)` re-renders the head of the prompt (the system message) with the tools
shown, as the template shows them (`_show_tools`). On a `ChatBackend` the requests carry
`self._messages` instead, and `self._text` is a transcript.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from runtime.chat_roles import SENTINEL
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
from runtime.lang.tools import call_plan, openai_tool_call, parse_calls, tool_dicts
from runtime.tool_calls.prompt_format import format_calls


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
        self._head_end: int | None = None  # end of the system message (or where it would go)
        self._system_content: str | None = None
        self._tools_shown: str | None = None  # JSON of the tools the head shows
        self._turn_calls: list[tuple[int, int, str, list[dict]]] = []  # (start, end, content, calls) in this turn
        self._unanswered: list[str] = []  # ids of the last assistant turn's calls without a tool result
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
        if self._chat_api and self._role is None and expr.value.strip():
            raise ValueError("the OpenAI backend runs chat programs: text must be inside system/user/assistant "
                             f"blocks, got {expr.value[:40]!r} outside them")
        self._append(expr.value)

    @property
    def _chat_api(self) -> bool:
        return self.backend.chat_api

    def _concat(self, expr: Concat) -> None:
        for item in expr.items:
            self._run(item)

    def _gen(self, expr: Gen) -> None:
        if expr.choices is not None:
            return self._select(Select(expr.name, expr.choices))
        params = self.params.merged(expr.params)
        if self._chat_api:
            return self._chat_gen(expr, params)
        if expr.tools:
            return self._tools_gen(expr, params)
        sampling, options = params.to_engine()
        name = expr.name
        if self.stream and (params.n or 1) == 1:
            self._stream_into(name, self.backend.generate_stream(self._text, sampling, options))
        else:
            results = self.backend.generate(self._text, sampling, options)
            self._append(results[0][0], name)
            self._set_result(name, [t for t, _ in results], [m for _, m in results])
        self._cached_len = len(self._text)

    def _stream_into(self, name: str | None, chunks) -> None:
        """Append (delta, meta_info) chunks as they come; the variable grows with them."""
        value = ""
        for delta, meta in chunks:
            value += delta
            self._append(delta, name)
            self._set_result(name, [value], [meta])

    def _set_result(self, name: str | None, values: list, metas: list[dict]) -> None:
        if name is not None:  # n > 1: lists
            self.variables[name] = values if len(values) > 1 else values[0]
            self.meta[name] = metas if len(metas) > 1 else metas[0]

    def _tools_gen(self, expr: Gen, params: GenParams) -> None:
        """A gen whose output may (auto) or must (required / named) be tool calls in the
        model's own format; `s[name]` is the list of calls."""
        tools, parser = tool_dicts(expr.tools), self.backend.tool_parser()
        self._show_tools(tools)
        plan = call_plan(parser, tools, expr.tool_choice, expr.parallel_tool_calls)
        sampling, options = params.to_engine()
        if sampling.get("n", 1) != 1:
            raise ValueError("gen(tools=...) makes one sample; n must be 1")
        if plan is not None:
            clash = sorted(k for k in ("regex", "json_schema") if k in sampling)
            if clash:
                raise ValueError(f"gen(tools=...) constrains the output to calls; it cannot also take {clash}")
            sampling.update(plan.constraint)
        start = len(self._text)
        self._append(plan.opening if plan else "", expr.name)
        [(text, meta)] = self.backend.generate(self._text, sampling, options)
        self._append(text + (plan.closing if plan else ""), expr.name)
        content, calls = parse_calls(parser, self._text[start:])
        if plan is not None and plan.forced and not calls:  # a forced call that did not finish
            raise RuntimeError(f"gen {expr.name!r}: the tool call was cut off ({meta.get('finish_reason')}); "
                               f"raise max_tokens")
        if not expr.parallel_tool_calls:
            calls = calls[:1]
        self._turn_calls.append((start, len(self._text), content or "", calls))
        self._set_result(expr.name, [calls], [{**meta, "content": content,
                                               "tool_calls": [openai_tool_call(c) for c in calls]}])
        self._cached_len = len(self._text)

    def _show_tools(self, tools: list[dict]) -> None:
        """Re-render the system message (or the template's default one) with `tools` shown."""
        key = json.dumps(tools, sort_keys=True)
        if key == self._tools_shown:
            return
        if self._head_end is None:
            raise ValueError("gen(tools=...) needs a chat program that began with a system or user block: the "
                             "tools are shown in the system message")
        head = [{"role": "system", "content": self._system_content}] if self._system_content is not None else []
        probe = self.backend.render_chat(head + [{"role": "user", "content": SENTINEL}], tools)
        cut = probe.find(self.backend.chat_roles().markers["user"][0] + SENTINEL)
        if cut < 0:
            raise ValueError("this chat template does not show tools before the first user message; "
                             "gen(tools=...) cannot place them")
        new_head, shift = probe[:cut], cut - self._head_end
        with self._cond:
            self._text = new_head + self._text[self._head_end:]
        self._role_start += shift
        self._scopes = {k: v + shift for k, v in self._scopes.items()}
        self._turn_calls = [(a + shift, b + shift, c, calls) for a, b, c, calls in self._turn_calls]
        self._head_end, self._tools_shown, self._cached_len = cut, key, 0

    def _chat_gen(self, expr: Gen, params: GenParams) -> None:
        self._check_chat_turn("gen")
        sampling, options = params.to_engine()
        tools = tool_dicts(expr.tools) if expr.tools else None
        name = expr.name
        if self.stream and not tools and sampling.get("n", 1) == 1:
            return self._stream_into(name, self.backend.chat_stream(self._messages, sampling, options))
        results = self.backend.chat(self._messages, sampling, options, tools, expr.tool_choice,
                                    expr.parallel_tool_calls)
        content, calls, _ = results[0]
        start = len(self._text)
        self._append(content + (format_calls([openai_tool_call(c) for c in calls]) if calls else ""), name)
        if tools:
            self._turn_calls.append((start, len(self._text), content, calls))
            metas = [{**m, "content": c or None, "tool_calls": [openai_tool_call(x) for x in k]} for c, k, m in results]
            self._set_result(name, [k for _, k, _ in results], metas)
        else:
            self._set_result(name, [c for c, _, _ in results], [m for _, _, m in results])

    def _check_chat_turn(self, what: str) -> None:
        if self._role != "assistant" or self._text[self._role_start:].strip():
            raise ValueError(f"the OpenAI backend runs {what} only at the start of an assistant block "
                             f"(chat APIs cannot continue a half-written reply)")

    def _select(self, expr: Select) -> None:
        if self._chat_api:
            self._check_chat_turn("select")
            index, meta = self.backend.choose(self._messages, list(expr.choices))
            self._set_result(expr.name, [expr.choices[index]], [{**meta, "choice_index": index}])
            return self._append(expr.choices[index], expr.name)
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
        if expr.role not in roles.markers:
            raise ValueError(f"this chat template has no {expr.role!r} role (it renders {sorted(roles.markers)})")
        if not self._messages and not self._text and not self._chat_api:
            if expr.role != "system":
                self._append(roles.default_system)
                self._head_end = len(self._text)
            else:
                self._head_end = -1  # set when the system message ends
        self._role = expr.role
        self._append(roles.markers[expr.role][0])
        self._role_start = len(self._text)
        self._turn_calls = []

    def _role_end(self, expr: RoleEnd) -> None:
        if self._role != expr.role:
            raise ValueError(f"role {expr.role!r} ends, but the open role is {self._role!r}")
        message = {"role": expr.role, "content": self._turn_content()}
        calls = [openai_tool_call(c) for *_, turn_calls in self._turn_calls for c in turn_calls]
        if calls:
            message["tool_calls"] = calls
            self._unanswered = [c["id"] for c in calls]
        if expr.role == "tool" and self._unanswered:
            message["tool_call_id"] = self._unanswered.pop(0)
        self._messages.append(message)
        self._role = None
        self._append(self.backend.chat_roles().markers[expr.role][1])
        if calls and expr.role == "assistant" and not self._chat_api:
            self._render_call_turn(message)
        if self._head_end == -1:
            self._head_end, self._system_content = len(self._text), message["content"]

    def _render_call_turn(self, message: dict) -> None:
        """Re-write the assistant turn that made tool calls as the chat template renders it
        (the history the model was trained on, and what a server would render from
        messages), instead of the whitespace the grammar let the model write."""
        base = [{"role": "user", "content": "U"}]
        before, after = self.backend.render_chat(base, None), self.backend.render_chat(base + [message], None)
        block, opening = after[len(before):], self.backend.chat_roles().markers["assistant"][0]
        if after.startswith(before) and block.startswith(opening):
            turn_start = self._role_start - len(opening)
            with self._cond:
                self._text = self._text[:turn_start] + block
            self._cached_len = min(self._cached_len, turn_start)

    def _turn_content(self) -> str:
        """The open role's text, each tool-call span replaced by its content outside the calls."""
        pieces, pos = [], self._role_start
        for start, end, content, calls in self._turn_calls:
            pieces += [self._text[pos:start], content if calls else self._text[start:end]]
            pos = end
        return ("".join(pieces) + self._text[pos:]).strip()

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

    __setitem__ = set_var

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
        new._head_end, new._system_content, new._tools_shown = self._head_end, self._system_content, self._tools_shown
        new._turn_calls, new._unanswered = list(self._turn_calls), list(self._unanswered)
        new.variables, new.meta = dict(self.variables), dict(self.meta)
        new._done = True
        return new

    def fork(self, size: int = 1) -> "ForkGroup":
        """`size` branches that continue from here; `forks += expr` runs them concurrently.
        The shared text is prefilled once first, so every branch reads it from the cache."""
        if size < 1:
            raise ValueError(f"fork size must be >= 1, got {size}")
        if len(self._text) > self._cached_len:
            self.backend.cache_prefix(self._messages if self._chat_api else self._text)
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

"""Role markers of a chat template: the text before and after one message of each role,
read off the template by rendering it around a sentinel. Frontend programs build their
prompt text from them (`s += user("Hi")` appends user prefix + "Hi" + user suffix), so
the text equals what the template renders for the same messages.

`render(messages, add_generation_prompt) -> str` is any renderer (a Hugging Face
tokenizer's `apply_chat_template(..., tokenize=False)`, the server's sandboxed Jinja).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

SENTINEL = "\u2063RADIXFLOW-SENTINEL\u2063"


@dataclass(frozen=True)
class ChatRoles:
    markers: dict[str, tuple[str, str]]  # role -> (prefix, suffix)
    default_system: str  # what the template puts before a first message that is not a system one

    def to_dict(self) -> dict:
        return {"markers": {r: list(m) for r, m in self.markers.items()}, "default_system": self.default_system}

    @classmethod
    def from_dict(cls, d: dict) -> "ChatRoles":
        return cls({r: (m[0], m[1]) for r, m in d["markers"].items()}, d["default_system"])


def _between(before: str, after: str) -> tuple[str, str]:
    """(prefix, suffix) of the one message that `after` renders beyond `before`."""
    if not after.startswith(before) or SENTINEL not in after:
        raise ValueError("the chat template does not render messages one after another")
    prefix, suffix = after[len(before):].split(SENTINEL)
    return prefix, suffix


def read_chat_roles(render: Callable[[list[dict], bool], str]) -> ChatRoles:
    def msg(role: str, content: str = SENTINEL) -> dict:
        return {"role": role, "content": content}

    system = _between("", render([msg("system")], False))
    base = [msg("system", "S")]
    user = _between(render(base, False), render(base + [msg("user")], False))
    base2 = base + [msg("user", "U")]
    assistant = _between(render(base2, False), render(base2 + [msg("assistant")], False))
    lone_user = render([msg("user")], False).split(SENTINEL)[0]
    default_system = lone_user[: len(lone_user) - len(user[0])] if lone_user.endswith(user[0]) else ""
    markers = {"system": system, "user": user, "assistant": assistant}
    base3 = base2 + [msg("assistant", "A")]
    try:  # a tool result after an assistant turn (templates differ; some reject it)
        markers["tool"] = _between(render(base3, False), render(base3 + [msg("tool")], False))
    except Exception:  # noqa: BLE001 - no tool role then
        pass
    return ChatRoles(markers, default_system)

"""Chat templates: the checkpoint's Jinja template (tokenizer_config.json
`chat_template`, or chat_template.jinja) or a `--chat-template FILE`, rendered in an
immutable sandbox, with tools and tool messages, the way transformers renders them
(trim_blocks, lstrip_blocks, `tojson` without HTML escaping, `raise_exception`)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment


class TemplateError(ValueError):
    """The template refused the conversation (raise_exception) or failed to render."""


def _raise_exception(message: str):
    raise TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def load_template_source(model_path: str, override_file: str | None = None) -> str | None:
    """The template text: the override file (raw Jinja, or JSON with a `chat_template`
    key), else the checkpoint's. None when the model has none."""
    if override_file:
        text = Path(override_file).read_text()
        if override_file.endswith(".json"):
            text = json.loads(text)["chat_template"]
        return text
    path = Path(model_path)
    jinja_file = path / "chat_template.jinja"
    if jinja_file.exists():
        return jinja_file.read_text()
    cfg_file = path / "tokenizer_config.json"
    if cfg_file.exists():
        template = json.loads(cfg_file.read_text()).get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            by_name = {t.get("name"): t.get("template") for t in template}
            template = by_name.get("default") or next(iter(by_name.values()), None)
        return template
    return None


class ChatTemplate:
    def __init__(self, source: str, special_tokens: dict[str, str] | None = None) -> None:
        self.source = source
        self.template = _compile(source)
        self.special_tokens = dict(special_tokens or {})

    @classmethod
    def for_model(cls, model_path: str, tokenizer, override_file: str | None = None) -> "ChatTemplate | None":
        source = load_template_source(model_path, override_file)
        if not source:
            return None
        names = ("bos_token", "eos_token", "pad_token", "unk_token")
        tokens = {n: getattr(tokenizer, n, None) or "" for n in names}
        return cls(source, {k: v if isinstance(v, str) else str(v) for k, v in tokens.items()})

    def render(self, messages: list[dict], tools: list[dict] | None = None,
               add_generation_prompt: bool = True, **kwargs: Any) -> str:
        context = {**self.special_tokens, **kwargs, "messages": messages, "tools": tools or None}
        context.setdefault("add_generation_prompt", add_generation_prompt)
        try:
            return self.template.render(**context)
        except TemplateError:
            raise
        except jinja2.TemplateError as e:
            raise TemplateError(f"the chat template failed to render: {e}") from None
        except (TypeError, KeyError, AttributeError, IndexError) as e:
            raise TemplateError(f"the chat template failed to render these messages: "
                                f"{type(e).__name__}: {e}") from None


def message_to_template_dict(msg) -> dict:
    """A `protocol.ChatMessage` as the dict templates expect: text parts joined into
    one string, tool-call arguments parsed into objects when they are JSON."""
    content = msg.content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if part.type != "text" or part.text is None:
                raise ValueError(f"messages[].content[{i}]: only text content parts are supported, "
                                 f"got type {part.type!r}")
            texts.append(part.text)
        content = "\n".join(texts)
    out: dict[str, Any] = {"role": "system" if msg.role == "developer" else msg.role, "content": content}
    if msg.name is not None:
        out["name"] = msg.name
    if msg.tool_call_id is not None:
        out["tool_call_id"] = msg.tool_call_id
    if msg.tool_calls:
        calls = []
        for call in msg.tool_calls:
            args = call.function.arguments
            if isinstance(args, str):
                try:
                    args = json.loads(args) if args.strip() else {}
                except json.JSONDecodeError:
                    pass  # keep the string; the template prints it verbatim
            calls.append({"id": call.id, "type": "function",
                          "function": {"name": call.function.name, "arguments": args}})
        out["tool_calls"] = calls
    return out

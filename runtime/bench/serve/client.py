"""Runs a session against one server and records each request (metrics.RequestRecord).

Backends (`--backend`):
  openai-chat  POST /v1/chat/completions, streamed, with usage (stream_options)
  openai       POST /v1/completions on the session rendered as plain text
  native       POST /generate (SGLang's), streamed; json-schema via sampling_params
Every request streams: chunk arrival times give TTFT and ITL. The extras a workload
asks for (ignore_eos) go in the body as the SGLang/vLLM extra fields.
"""

from __future__ import annotations

import json
import time

import httpx

from runtime.bench.serve.metrics import RequestRecord
from runtime.bench.serve.workloads import Session, Turn

BACKENDS = ("openai-chat", "openai", "native")


class UnsupportedWorkload(ValueError):
    """The backend (this API, not the server) cannot express the workload."""


def check_supported(backend: str, workload: str) -> None:
    if workload == "tool-agent" and backend != "openai-chat":
        raise UnsupportedWorkload("tool-agent needs --backend openai-chat (tools are a chat feature)")


def render_text(messages: list[dict]) -> str:
    """The plain-text form of a conversation, for completion APIs."""
    lines = [f"{m['role'].capitalize()}: {m.get('content') or ''}" for m in messages]
    return "\n".join(lines) + "\nAssistant:"


async def run_session(client: httpx.AsyncClient, backend: str, model: str, session: Session,
                      records: list[RequestRecord], on_request=None) -> None:
    """The session's turns in order; each reply is appended to the history."""
    messages: list[dict] = [{"role": "system", "content": session.system}]
    pending_calls: list[dict] = []
    for k, turn in enumerate(session.turns):
        _add_turn_input(messages, turn, pending_calls)
        record = RequestRecord(session.workload, session.index, k, start=time.perf_counter())
        try:
            text, calls = await _SENDERS[backend](client, model, messages, session, turn, record)
        except Exception as e:  # noqa: BLE001 - every failure is a result
            record.ok, record.error = False, f"{type(e).__name__}: {e}"[:500]
            text, calls = "", []
        record.end = time.perf_counter()
        if record.ok and record.completion_tokens is None:  # no usage in the stream (llama-cpp-python)
            record.completion_tokens, record.tokens_counted = len(record.chunk_times), True
        if session.ignore_eos and record.finish_reason == "length":
            record.finish_reason = None  # the intended end, not a cut-off
        if record.ok and session.schema is not None:
            record.valid = _validates(text, session.schema)
        record.tool_calls = len(calls)
        records.append(record)
        if on_request is not None:
            on_request()
        if not record.ok:
            return  # the rest of the conversation depends on this reply
        reply: dict = {"role": "assistant", "content": text}
        if calls:
            reply["tool_calls"] = calls
            reply["content"] = text or None
        messages.append(reply)
        pending_calls = calls


def _add_turn_input(messages: list[dict], turn: Turn, pending_calls: list[dict]) -> None:
    if turn.tool_result is not None:
        if pending_calls:
            messages += [{"role": "tool", "tool_call_id": c["id"], "content": turn.tool_result} for c in pending_calls]
        else:  # the server made no call: hand the result over as the user
            messages.append({"role": "user", "content": f"Tool result: {turn.tool_result}"})
    if turn.user is not None:
        messages.append({"role": "user", "content": turn.user})


def _validates(text: str, schema: dict) -> bool:
    import jsonschema

    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


async def _sse(client: httpx.AsyncClient, path: str, body: dict):
    """The `data:` payloads of a streamed response, decoded ('[DONE]' ends it)."""
    async with client.stream("POST", path, json=body) as response:
        if response.status_code != 200:
            detail = (await response.aread()).decode("utf-8", "replace")[:300]
            raise RuntimeError(f"HTTP {response.status_code}: {detail}")
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            payload = json.loads(data)
            if "error" in payload:
                raise RuntimeError(f"stream error: {str(payload['error'])[:300]}")
            yield payload


def _usage(record: RequestRecord, usage: dict | None) -> None:
    if not usage:
        return
    record.prompt_tokens = usage.get("prompt_tokens")
    record.completion_tokens = usage.get("completion_tokens")
    details = usage.get("prompt_tokens_details") or {}
    record.cached_tokens = details.get("cached_tokens")


async def _chat(client, model, messages, session: Session, turn: Turn, record) -> tuple[str, list[dict]]:
    body = {"model": model, "messages": messages, "max_tokens": turn.max_tokens, "stream": True,
            "stream_options": {"include_usage": True}, "temperature": 0.0, **session.extra_body()}
    if turn.response_format is not None:
        body["response_format"] = turn.response_format
    if session.tools:
        body["tools"] = session.tools
        body["tool_choice"] = turn.tool_choice or "auto"
    text, calls = [], {}
    async for chunk in _sse(client, "/v1/chat/completions", body):
        _usage(record, chunk.get("usage"))
        for choice in chunk.get("choices") or []:
            record.finish_reason = choice.get("finish_reason") or record.finish_reason
            delta = choice.get("delta") or {}
            got = False
            if delta.get("content"):
                text.append(delta["content"])
                got = True
            for call in delta.get("tool_calls") or []:
                entry = calls.setdefault(call.get("index", 0), {"id": None, "type": "function",
                                                                "function": {"name": "", "arguments": ""}})
                entry["id"] = call.get("id") or entry["id"]
                fn = call.get("function") or {}
                entry["function"]["name"] += fn.get("name") or ""
                entry["function"]["arguments"] += fn.get("arguments") or ""
                got = True
            if got:
                record.chunk_times.append(time.perf_counter())
    out_calls = [dict(c, id=c["id"] or f"call_{i}") for i, c in sorted(calls.items())]
    return "".join(text), out_calls


async def _completion(client, model, messages, session: Session, turn: Turn, record) -> tuple[str, list[dict]]:
    body = {"model": model, "prompt": render_text(messages), "max_tokens": turn.max_tokens, "stream": True,
            "stream_options": {"include_usage": True}, "temperature": 0.0, **session.extra_body()}
    if turn.response_format is not None:
        body["response_format"] = turn.response_format
    text = []
    async for chunk in _sse(client, "/v1/completions", body):
        _usage(record, chunk.get("usage"))
        for choice in chunk.get("choices") or []:
            record.finish_reason = choice.get("finish_reason") or record.finish_reason
            if choice.get("text"):
                text.append(choice["text"])
                record.chunk_times.append(time.perf_counter())
    return "".join(text), []


async def _native(client, model, messages, session: Session, turn: Turn, record) -> tuple[str, list[dict]]:
    params = {"max_new_tokens": turn.max_tokens, "temperature": 0.0, **session.extra_body()}
    if turn.response_format is not None:
        params["json_schema"] = json.dumps(turn.response_format["json_schema"]["schema"])
    text = ""
    async for chunk in _sse(client, "/generate", {"text": render_text(messages), "sampling_params": params,
                                                  "stream": True}):
        meta = chunk.get("meta_info") or {}
        if len(chunk.get("text", "")) > len(text):
            text = chunk["text"]
            record.chunk_times.append(time.perf_counter())
        record.prompt_tokens = meta.get("prompt_tokens", record.prompt_tokens)
        record.completion_tokens = meta.get("completion_tokens", record.completion_tokens)
        record.cached_tokens = meta.get("cached_tokens", record.cached_tokens)
        if meta.get("finish_reason"):
            record.finish_reason = meta["finish_reason"]["type"]
    return text, []


_SENDERS = {"openai-chat": _chat, "openai": _completion, "native": _native}

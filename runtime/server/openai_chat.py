"""POST /v1/chat/completions: chat template -> engine requests (one per choice) ->
OpenAI chat completion (or chunk stream), with tool calls parsed from the output."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from functools import partial

from starlette.requests import Request

from runtime.core import CONSTRAINT_FIELDS
from runtime.server.chat_template import message_to_template_dict
from runtime.server.errors import bad_request, from_exception
from runtime.server.metrics import StreamTimer
from runtime.server.openai_common import (
    abort_error,
    base_sampling_params,
    chat_logprobs,
    finish_reason,
    matched_stop,
    merge_constraint,
    new_id,
    per_choice,
    resolve_max_tokens,
    response_format_constraint,
    usage,
    validate_schema,
    vllm_constraint,
)
from runtime.server.protocol import ChatCompletionRequest
from runtime.server.reasoning import reasoning_mode, split_reasoning
from runtime.server.state import ServerState, session_id
from runtime.server.streaming import (
    SSE_DONE,
    SSEResponse,
    cancel_on_disconnect,
    gather_or_cancel,
    merge_streams,
    sse,
    sse_error,
)
from runtime.tool_calls.parsers import (
    JsonArrayParser,
    NamedFunctionParser,
    ToolCallStreamer,
    ToolParser,
    required_schema,
    tool_parameters,
)


@dataclass
class ToolPlan:
    parser: ToolParser | None = None  # None: the output is plain content
    template_tools: list[dict] | None = None  # shown to the model by the chat template
    constraint: dict | None = None  # sampling-param constraint that holds calls to the schemas
    max_calls: int | None = None
    forced: bool = False  # required / named: the constraint is not optional


def plan_tools(state: ServerState, req: ChatCompletionRequest) -> ToolPlan:
    tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
    choice = req.tool_choice if req.tool_choice is not None else ("auto" if tools else "none")
    if not tools:
        if choice not in ("none", "auto"):
            raise bad_request("tool_choice requires tools", param="tool_choice")
        return ToolPlan()
    names = [t["function"]["name"] for t in tools]
    if len(set(names)) != len(names):
        raise bad_request("tool function names must be unique", param="tools")
    for i, tool in enumerate(tools):
        validate_schema(tool_parameters(tool), f"tools[{i}].function.parameters")
    if choice == "none":
        # the prompt tool_choice auto would give (an agent's next step finds its prefix cached),
        # but the output may not open with a call: the model writes its answer instead
        no_call = state.tool_parser.no_call_regex()
        return ToolPlan(template_tools=tools, constraint={"regex": no_call} if no_call else None)
    max_calls = None if req.parallel_tool_calls else 1
    if choice == "auto":
        return ToolPlan(state.tool_parser, tools, {"structural_tag": state.tool_parser.structural_tag(tools)},
                        max_calls)
    if choice == "required":
        schema = required_schema(tools, req.parallel_tool_calls)
        return ToolPlan(JsonArrayParser(), tools, {"json_schema": json.dumps(schema)}, max_calls, True)
    name = choice.function.name
    if name not in names:
        raise bad_request(f"tool_choice names function {name!r}, which is not in tools", param="tool_choice")
    tool = tools[names.index(name)]
    return ToolPlan(NamedFunctionParser(name), tools, {"json_schema": json.dumps(tool_parameters(tool))}, 1, True)


async def create_chat_completion(state: ServerState, req: ChatCompletionRequest, request: Request):
    arrival = time.time()
    state.check_model(req.model)
    try:
        messages = [message_to_template_dict(m) for m in req.messages]
    except ValueError as e:
        raise bad_request(str(e), param="messages") from None
    plan = await asyncio.to_thread(plan_tools, state, req)  # schema checks: off the event loop
    prompt, input_ids = await state.render_and_tokenize(messages, plan.template_tools,
                                                        dict(req.chat_template_kwargs or {}))
    if not input_ids:
        raise bad_request("the rendered prompt is empty", param="messages")
    reasoning = reasoning_mode(prompt) if state.settings.reasoning_parser == "think" else None
    sp = await asyncio.to_thread(_sampling_params, state, req, plan, len(input_ids))
    if reasoning and any(sp.get(k) for k in CONSTRAINT_FIELDS):
        sp["grammar_reasoning"] = True  # the constraint holds from the end of the reasoning on
    split = reasoning if req.separate_reasoning else None  # how to split the output (None: not at all)
    rid = req.rid or new_id("chatcmpl")
    gen = dict(input_ids=input_ids, return_logprob=req.logprobs, top_logprobs_num=req.top_logprobs or 0,
               return_text_in_logprobs=req.logprobs, cache_salt=req.cache_salt,
               session_id=session_id(request, req.user))
    rids = [rid] if req.n == 1 else [f"{rid}-{i}" for i in range(req.n)]
    model = req.model or state.served_model_name
    if req.stream:
        streams, lease = await state.open_streams(req.n, [
            partial(state.engine.async_generate, sampling_params=per_choice(sp, i), rid=r, stream=True, **gen)
            for i, r in enumerate(rids)])
        body = _stream(state, req, plan, split, streams, rid, model, arrival)
        return SSEResponse(body, on_close=lease.release)
    with state.admitted(req.n):
        coros = [state.engine.async_generate(sampling_params=per_choice(sp, i), rid=r, **gen)
                 for i, r in enumerate(rids)]
        results = await cancel_on_disconnect(request, gather_or_cancel(coros))
    return _response(state, req, plan, split, results, rid, model, arrival)


def _sampling_params(state: ServerState, req: ChatCompletionRequest, plan: ToolPlan, prompt_len: int) -> dict:
    requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    sp = base_sampling_params(req, resolve_max_tokens(requested, prompt_len, state, param))
    content_format = response_format_constraint(req.response_format)  # checked even when set aside
    if not plan.forced:  # a forced call (required / named) leaves no content for response_format to shape
        sp = merge_constraint(sp, content_format, "response_format")
    sp = merge_constraint(sp, vllm_constraint(req), "structured_outputs")
    if plan.constraint:
        if plan.forced:
            sp = merge_constraint(sp, plan.constraint, "tool_choice 'required' or a named function")
        elif not any(sp.get(k) for k in CONSTRAINT_FIELDS):
            sp = {**sp, **plan.constraint}  # auto: only when nothing else constrains the output
    return sp


def _response(state: ServerState, req, plan: ToolPlan, split: str | None, results: list[dict], rid: str,
              model: str, arrival: float) -> dict:
    choices, completion_tokens = [], 0
    for i, result in enumerate(results):
        meta = result["meta_info"]
        state.metrics.observe_finished(meta, time.time() - arrival)
        error = abort_error(meta)
        if error is not None:
            raise error
        completion_tokens += meta["completion_tokens"]
        reasoning, content = split_reasoning(result["text"], split) if split else (None, result["text"])
        calls = []
        if plan.parser is not None:
            content, calls = plan.parser.parse(content)
            calls = calls[:plan.max_calls] if plan.max_calls else calls
        message: dict = {"role": "assistant", "content": content}
        if split:
            message["reasoning_content"] = reasoning or None
        if calls:
            message["tool_calls"] = [c.to_dict() for c in calls]
        choices.append({"index": i, "message": message,
                        "logprobs": chat_logprobs(meta, 0, meta["completion_tokens"]) if req.logprobs else None,
                        "finish_reason": "tool_calls" if calls else finish_reason(meta),
                        "matched_stop": matched_stop(meta)})
    metas = [r["meta_info"] for r in results]
    return {"id": rid, "object": "chat.completion", "created": int(arrival), "model": model, "choices": choices,
            "usage": usage(metas[0]["prompt_tokens"], completion_tokens, min(m["cached_tokens"] for m in metas))}


async def _stream(state: ServerState, req, plan: ToolPlan, split: str | None, streams: list, rid: str, model: str,
                  arrival: float):
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    created = int(arrival)

    def chunk(choices: list, usage_: dict | None = None) -> bytes:
        body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": choices}
        if include_usage:
            body["usage"] = usage_
        return sse(body)

    n = len(streams)
    streamers = [ToolCallStreamer(plan.parser, plan.max_calls) if plan.parser else None for _ in range(n)]
    text_sent, reasoning_sent, tokens_sent = [0] * n, [0] * n, [0] * n
    timers = [StreamTimer(state.metrics, arrival) for _ in range(n)]
    metas: list[dict | None] = [None] * n
    merged = merge_streams(streams)
    try:
        for i in range(n):
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                          "finish_reason": None}])
        async for i, out in merged:
            meta = out["meta_info"]
            finished = meta["finish_reason"] is not None
            timers[i].tick(time.time(), meta["completion_tokens"])
            if finished:
                metas[i] = meta
                state.metrics.observe_finished(meta, time.time() - arrival)
                error = abort_error(meta)
                if error is not None:
                    yield sse_error(error)
                    yield SSE_DONE
                    return
            text, reasoning_delta = out["text"], ""
            if split:
                reasoning, text = split_reasoning(text, split, final=finished)
                reasoning_delta, reasoning_sent[i] = reasoning[reasoning_sent[i]:], len(reasoning)  # grows only
            tool_deltas: list[dict] = []
            if streamers[i] is not None:
                content, tool_deltas = streamers[i].update(text, final=finished)
            else:
                content, text_sent[i] = text[text_sent[i]:], len(text)
            logprobs = None
            if req.logprobs and meta["completion_tokens"] > tokens_sent[i]:
                logprobs = chat_logprobs(meta, tokens_sent[i], meta["completion_tokens"])
                tokens_sent[i] = meta["completion_tokens"]
            # one tool-call delta per chunk, as OpenAI streams them (some clients read only the first)
            deltas = [{"tool_calls": [d]} for d in tool_deltas]
            if content or not deltas:
                deltas.insert(0, {"content": content} if content else {})
            if reasoning_delta:
                deltas.insert(0, {"reasoning_content": reasoning_delta})
            for k, delta in enumerate(deltas):
                chunk_logprobs = logprobs if k == 0 else None
                if delta or chunk_logprobs:
                    yield chunk([{"index": i, "delta": delta, "logprobs": chunk_logprobs, "finish_reason": None}])
            if finished:
                reason = "tool_calls" if streamers[i] and streamers[i].num_calls else finish_reason(meta)
                yield chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": reason,
                              "matched_stop": matched_stop(meta)}])
        if include_usage:
            done = [m for m in metas if m]
            yield chunk([], usage(done[0]["prompt_tokens"], sum(m["completion_tokens"] for m in done),
                                  min(m["cached_tokens"] for m in done)))
        yield SSE_DONE
    except Exception as e:  # noqa: BLE001 - the status line is sent: report in-band
        err = from_exception(e)
        yield sse_error(err)
        yield SSE_DONE
    finally:
        await merged.aclose()  # cancels and aborts choices still running

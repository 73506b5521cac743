"""POST /v1/completions: text or token prompts (one or a batch) -> engine requests
(n per prompt) -> OpenAI text completion (or chunk stream). Choice `p * n + i` is
choice i of prompt p."""

from __future__ import annotations

import asyncio
import json
import time
from functools import partial

from starlette.requests import Request

from runtime.server.errors import bad_request, from_exception
from runtime.server.metrics import StreamTimer
from runtime.server.openai_common import (
    abort_error,
    base_sampling_params,
    completion_logprobs,
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
from runtime.server.protocol import CompletionRequest
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

MAX_BATCH = 256


async def _prompts(state: ServerState, req: CompletionRequest) -> list[tuple[str | None, list[int]]]:
    """(text or None, token ids) per prompt."""
    prompt = req.prompt
    if isinstance(prompt, str):
        items: list = [prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        items = [list(prompt)]
    else:
        items = list(prompt)
    if not items:
        raise bad_request("prompt must not be empty", param="prompt")
    if len(items) > MAX_BATCH:
        raise bad_request(f"at most {MAX_BATCH} prompts per request", param="prompt")
    out = []
    for item in items:
        if isinstance(item, str):
            out.append((item, await state.tokenize(item)))
        else:
            if any(not 0 <= t < state.vocab_size for t in item):
                raise bad_request(f"prompt token ids must be in [0, {state.vocab_size})", param="prompt")
            out.append((None, list(item)))
    for _, ids in out:
        if not ids:
            raise bad_request("a prompt is empty: at least one token is required", param="prompt")
    return out


def _constraint(req: CompletionRequest) -> dict:
    vllm = vllm_constraint(req)
    if req.json_schema is not None:
        schema = validate_schema(req.json_schema, "json_schema")
        return merge_constraint({"json_schema": json.dumps(schema)}, vllm, "structured_outputs")
    return merge_constraint(response_format_constraint(req.response_format), vllm, "structured_outputs")


async def create_completion(state: ServerState, req: CompletionRequest, request: Request):
    arrival = time.time()
    state.check_model(req.model)
    if req.suffix:
        raise bad_request("suffix is not supported", param="suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise bad_request("best_of other than n is not supported", param="best_of")
    prompts = await _prompts(state, req)
    constraint = await asyncio.to_thread(_constraint, req)  # schema checks: off the event loop
    specs = []  # (prompt index, choice index, rid, sampling params)
    rid = req.rid or new_id("cmpl")
    for p, (_, ids) in enumerate(prompts):
        sp = base_sampling_params(req, resolve_max_tokens(req.max_tokens if req.max_tokens is not None else 16,
                                                          len(ids), state))
        sp = merge_constraint(sp, constraint, "json_schema/response_format")
        for i in range(req.n):
            r = rid if len(prompts) * req.n == 1 else f"{rid}-{p * req.n + i}"
            specs.append((p, r, per_choice(sp, i)))
    want_logprobs = req.logprobs is not None
    echo_logprobs = req.echo and want_logprobs

    def gen(p: int, r: str, sp: dict, stream: bool):
        return state.engine.async_generate(
            input_ids=prompts[p][1], sampling_params=sp, rid=r, stream=stream, return_logprob=want_logprobs,
            top_logprobs_num=req.logprobs or 0, return_text_in_logprobs=want_logprobs,
            logprob_start_len=0 if echo_logprobs else -1, cache_salt=req.cache_salt,
            session_id=session_id(request, req.user))

    model = req.model or state.served_model_name
    if req.stream:
        streams, lease = await state.open_streams(len(specs), [partial(gen, p, r, sp, True) for p, r, sp in specs])
        body = _stream(state, req, prompts, [p for p, _, _ in specs], streams, rid, model, arrival)
        return SSEResponse(body, on_close=lease.release)
    with state.admitted(len(specs)):
        results = await cancel_on_disconnect(request, gather_or_cancel([gen(p, r, sp, False) for p, r, sp in specs]))
    return _response(state, req, prompts, [p for p, _, _ in specs], results, rid, model, arrival)


def _echo_text(state: ServerState, prompt: tuple[str | None, list[int]]) -> str:
    text, ids = prompt
    return text if text is not None else state.tokenizer.decode(ids)


def _response(state, req, prompts, owners: list[int], results: list[dict], rid, model, arrival) -> dict:
    choices, completion_tokens = [], 0
    for k, (p, result) in enumerate(zip(owners, results)):
        meta = result["meta_info"]
        state.metrics.observe_finished(meta, time.time() - arrival)
        error = abort_error(meta)
        if error is not None:
            raise error
        completion_tokens += meta["completion_tokens"]
        prefix = _echo_text(state, prompts[p]) if req.echo else ""
        logprobs = None
        if req.logprobs is not None:
            logprobs = completion_logprobs(meta, 0, meta["completion_tokens"], 0, echo_prompt=req.echo)
        choices.append({"index": k, "text": prefix + result["text"], "logprobs": logprobs,
                        "finish_reason": finish_reason(meta), "matched_stop": matched_stop(meta)})
    first_meta = {}
    for p, result in zip(owners, results):  # each prompt counted once
        first_meta.setdefault(p, []).append(result["meta_info"])
    prompt_tokens = sum(metas[0]["prompt_tokens"] for metas in first_meta.values())
    cached = sum(min(m["cached_tokens"] for m in metas) for metas in first_meta.values())
    return {"id": rid, "object": "text_completion", "created": int(arrival), "model": model, "choices": choices,
            "usage": usage(prompt_tokens, completion_tokens, cached)}


async def _stream(state, req, prompts, owners: list[int], streams: list, rid, model, arrival):
    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    def chunk(choices: list, usage_: dict | None = None) -> bytes:
        body = {"id": rid, "object": "text_completion", "created": int(arrival), "model": model, "choices": choices}
        if include_usage:
            body["usage"] = usage_
        return sse(body)

    n = len(streams)
    text_sent, tokens_sent, offsets = [0] * n, [0] * n, [0] * n
    timers = [StreamTimer(state.metrics, arrival) for _ in range(n)]
    metas: list[dict | None] = [None] * n
    merged = merge_streams(streams)
    try:
        if req.echo:
            for k, p in enumerate(owners):
                echo = _echo_text(state, prompts[p])
                offsets[k] = len(echo)
                yield chunk([{"index": k, "text": echo, "logprobs": None, "finish_reason": None}])
        async for k, out in merged:
            meta = out["meta_info"]
            finished = meta["finish_reason"] is not None
            timers[k].tick(time.time(), meta["completion_tokens"])
            if finished:
                metas[k] = meta
                state.metrics.observe_finished(meta, time.time() - arrival)
                error = abort_error(meta)
                if error is not None:
                    yield sse_error(error)
                    yield SSE_DONE
                    return
            delta, text_sent[k] = out["text"][text_sent[k]:], len(out["text"])
            logprobs = None
            if req.logprobs is not None and meta["completion_tokens"] > tokens_sent[k]:
                logprobs = completion_logprobs(meta, tokens_sent[k], meta["completion_tokens"], offsets[k])
                tokens_sent[k] = meta["completion_tokens"]
            offsets[k] += len(delta)
            if delta or logprobs or finished:
                yield chunk([{"index": k, "text": delta, "logprobs": logprobs,
                              "finish_reason": finish_reason(meta) if finished else None}])
        if include_usage:
            by_prompt: dict[int, list[dict]] = {}
            for p, m in zip(owners, metas):
                if m:
                    by_prompt.setdefault(p, []).append(m)
            yield chunk([], usage(sum(ms[0]["prompt_tokens"] for ms in by_prompt.values()),
                                  sum(m["completion_tokens"] for ms in by_prompt.values() for m in ms),
                                  sum(min(m["cached_tokens"] for m in ms) for ms in by_prompt.values())))
        yield SSE_DONE
    except Exception as e:  # noqa: BLE001 - the status line is sent: report in-band
        err = from_exception(e)
        yield sse_error(err)
        yield SSE_DONE
    finally:
        await merged.aclose()  # cancels and aborts choices still running

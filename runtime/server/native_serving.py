"""SGLang-native endpoints in the shapes SGLang's frontend (`RuntimeEndpoint`) reads:
/generate, /get_model_info, /get_server_info, /flush_cache, /tokenize, /detokenize,
/health_generate."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from functools import partial

from starlette.requests import Request

from runtime.server.chat_template import message_to_template_dict
from runtime.server.errors import APIError, bad_request, from_exception
from runtime.server.metrics import StreamTimer
from runtime.server.openai_common import abort_error, drop_empty
from runtime.server.protocol import DetokenizeRequest, GenerateRequest, TokenizeRequest
from runtime.server.state import ServerState, session_id
from runtime.server.streaming import SSE_DONE, SSEResponse, cancel_on_disconnect, gather_or_cancel, sse, sse_error

MAX_BATCH = 1024


def _sampling_dict(params) -> dict:
    return drop_empty(params.model_dump(exclude_none=True) if params is not None else {})


def _finite_meta(meta: dict) -> dict:
    """Non-finite logprobs (masked tokens) -> -9999.0, so the body is valid JSON."""
    for key in ("output_token_logprobs", "input_token_logprobs"):
        if meta.get(key):
            meta[key] = [(_f(lp), tid, text) for lp, tid, text in meta[key]]
    for key in ("output_top_logprobs", "input_top_logprobs"):
        if meta.get(key):
            meta[key] = [None if top is None else [(_f(lp), tid, text) for lp, tid, text in top]
                         for top in meta[key]]
    return meta


def _f(x):
    return x if x is None or math.isfinite(x) else -9999.0


def _clean(result: dict) -> dict:
    result = dict(result)
    result.pop("delta", None)
    result["meta_info"] = _finite_meta(dict(result["meta_info"]))
    return result


async def generate(state: ServerState, req: GenerateRequest, request: Request):
    arrival = time.time()
    if (req.text is None) == (req.input_ids is None):
        raise bad_request("exactly one of text and input_ids is required", param="text")
    is_batch = isinstance(req.text, list) or (bool(req.input_ids) and isinstance(req.input_ids[0], list))
    prompt = req.input_ids if req.text is None else req.text
    items = prompt if is_batch else [prompt]
    if not items or len(items) > MAX_BATCH:
        raise bad_request(f"a batch holds 1 to {MAX_BATCH} prompts", param="text")
    params = req.sampling_params if isinstance(req.sampling_params, list) else [req.sampling_params] * len(items)
    if len(params) != len(items):
        raise bad_request(f"got {len(items)} prompts but {len(params)} sampling_params", param="sampling_params")
    sps = [_sampling_dict(p) for p in params]
    rids = req.rid if isinstance(req.rid, list) else [req.rid] * len(items)
    if len(rids) != len(items):
        raise bad_request("rid must be one id per prompt", param="rid")
    if is_batch and isinstance(req.rid, str):
        rids = [f"{req.rid}-{i}" for i in range(len(items))]
    rids = [r or uuid.uuid4().hex for r in rids]
    input_ids = [await state.tokenize(x) if isinstance(x, str) else x for x in items]
    kwargs = dict(return_logprob=req.return_logprob, logprob_start_len=req.logprob_start_len,
                  top_logprobs_num=req.top_logprobs_num, return_text_in_logprobs=req.return_text_in_logprobs,
                  cache_salt=req.cache_salt, session_id=session_id(request, req.session_id))
    num = sum(int(sp.get("n") or 1) for sp in sps)
    if req.stream:
        if is_batch:
            raise bad_request("stream=True takes a single prompt", param="stream")
        (stream,), lease = await state.open_streams(num, [partial(
            state.engine.async_generate, input_ids=input_ids[0], sampling_params=sps[0], rid=rids[0],
            stream=True, **kwargs)])
        return SSEResponse(_stream(state, stream, arrival), on_close=lease.release)
    with state.admitted(num):
        coros = [state.engine.async_generate(input_ids=ids, sampling_params=sp, rid=r, **kwargs)
                 for ids, sp, r in zip(input_ids, sps, rids)]
        results = await cancel_on_disconnect(request, gather_or_cancel(coros))
    out = []
    for result in results:
        group = result if isinstance(result, list) else [result]
        for r in group:
            state.metrics.observe_finished(r["meta_info"], time.time() - arrival)
            error = abort_error(r["meta_info"])
            if error is not None:
                raise error
        out.append([_clean(r) for r in group] if isinstance(result, list) else _clean(result))
    if is_batch:
        return [r for group in out for r in (group if isinstance(group, list) else [group])]
    return out[0]


async def _stream(state: ServerState, stream, arrival: float):
    timer = StreamTimer(state.metrics, arrival)
    try:
        async for chunk in stream:
            meta = chunk["meta_info"]
            timer.tick(time.time(), meta["completion_tokens"])
            if meta["finish_reason"] is not None:
                state.metrics.observe_finished(meta, time.time() - arrival)
                error = abort_error(meta)
                if error is not None:
                    yield sse_error(error)
                    break
            yield sse(_clean(chunk))
        yield SSE_DONE
    except Exception as e:  # noqa: BLE001 - the status line is sent: report in-band
        err = from_exception(e)
        yield sse_error(err)
        yield SSE_DONE
    finally:
        await stream.aclose()


def model_info(state: ServerState) -> dict:
    return {"model_path": state.model_path, "tokenizer_path": state.model_path, "is_generation": True,
            "served_model_name": state.served_model_name, "architectures": [state.info.get("architecture")],
            "context_length": state.context_length, "preferred_sampling_params": None,
            "weight_version": "default", "has_image_understanding": False, "has_audio_understanding": False,
            "chat_roles": state.chat_roles.to_dict() if state.chat_roles else None,
            "tool_call_parser": state.tool_parser.name}


async def server_info(state: ServerState) -> dict:
    info = await state.engine_call(state.engine.get_server_info)
    import runtime

    settings = {k: v for k, v in vars(state.settings).items() if k != "api_key"}
    return {"version": runtime.__version__, "model_path": state.model_path, **settings,
            "served_model_name": state.served_model_name,
            "engine_config": {k: v for k, v in vars(state.engine.config).items() if k != "extra"},
            "max_in_flight_requests": state.max_in_flight, "in_flight_requests": state.in_flight,
            **info, "internal_states": [info]}


async def flush_cache(state: ServerState) -> str:
    try:
        await state.engine_call(state.engine.flush_cache)
    except RuntimeError as e:
        raise bad_request(f"cache not flushed: {e}") from None
    return "Cache flushed.\n"


async def health_generate(state: ServerState, timeout_s: float = 60.0) -> None:
    """A real one-token generation; 503 when the engine cannot produce it in time."""
    if not state.engine_alive():
        raise APIError(503, "the engine process is not running")
    try:
        result = await asyncio.wait_for(state.engine.async_generate(
            input_ids=[0], sampling_params={"max_new_tokens": 1, "temperature": 0.0},
            rid=f"health-{uuid.uuid4().hex}"), timeout_s)
    except asyncio.TimeoutError:
        raise APIError(503, f"the engine did not generate a token within {timeout_s:.0f}s") from None
    if result["meta_info"]["finish_reason"]["type"] == "abort":
        raise APIError(503, f"health generation failed: {result['meta_info']['finish_reason'].get('message')}")


async def tokenize(state: ServerState, req: TokenizeRequest) -> dict:
    if req.messages is not None:  # rendered by the chat template; `prompt` is that text
        try:
            messages = [message_to_template_dict(m) for m in req.messages]
        except ValueError as e:
            raise bad_request(str(e), param="messages") from None
        tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
        options = {"add_generation_prompt": req.add_generation_prompt}
        text, ids = await state.render_and_tokenize(messages, tools, options)
        return {"tokens": ids, "count": len(ids), "max_model_len": state.context_length, "prompt": text}
    prompt = req.prompt if req.prompt is not None else req.text
    if prompt is None:
        raise bad_request("prompt (or text), or messages, is required", param="prompt")

    if isinstance(prompt, str):
        ids = await state.tokenize(prompt, req.add_special_tokens)
        return {"tokens": ids, "count": len(ids), "max_model_len": state.context_length}
    ids_list = [await state.tokenize(p, req.add_special_tokens) for p in prompt]
    return {"tokens": ids_list, "count": [len(i) for i in ids_list], "max_model_len": state.context_length}


async def detokenize(state: ServerState, req: DetokenizeRequest) -> dict:
    bad = [t for t in req.tokens if not 0 <= t < state.vocab_size]
    if bad:
        raise bad_request(f"token ids must be in [0, {state.vocab_size}), got {bad[:5]}", param="tokens")
    text = await asyncio.to_thread(state.tokenizer.decode, req.tokens, skip_special_tokens=req.skip_special_tokens)
    return {"text": text}

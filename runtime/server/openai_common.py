"""Pieces shared by /v1/chat/completions and /v1/completions: OpenAI fields ->
SGLang sampling params, token limits, response formats, logprobs, usage, finish
reasons, and turning engine results into errors."""

from __future__ import annotations

import dataclasses
import json
import math
import uuid

from runtime.constrained.regex_util import choices_regex
from runtime.core import CONSTRAINT_FIELDS, OPENAI_NAMES, SamplingParamError, SamplingParams
from runtime.prompt_check import check_fits
from runtime.server.errors import APIError, bad_request
from runtime.server.protocol import OPENAI_EXCLUDED


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def resolve_max_tokens(requested: int | None, prompt_len: int, state, param: str = "max_tokens") -> int:
    """The completion budget: what was asked for, or what the context leaves."""
    budget = state.context_length - prompt_len if requested is None else requested
    try:
        check_fits(prompt_len, budget, state.context_length, state.info["max_total_tokens"])
    except SamplingParamError as e:
        raise bad_request(str(e).replace("max_new_tokens", param), param=param) from None
    except ValueError as e:  # the prompt itself
        raise bad_request(str(e), param="prompt" if param == "max_tokens" else "messages") from None
    return budget


def drop_empty(sp: dict) -> dict:
    """Empty stop lists and strings mean none."""
    return {k: v for k, v in sp.items() if not (k in ("stop", "stop_token_ids", "stop_regex") and v in ([], ""))}


def checked_sampling_params(sp: dict, names: dict[str, str]) -> dict:
    """`sp` (engine names) validated by SamplingParams, the errors naming the field as the
    client sent it (`names`: engine name -> API name)."""
    try:
        SamplingParams.from_dict(sp).validate()
    except SamplingParamError as e:
        name = names.get(e.name, e.name)
        raise bad_request(str(e).replace(e.name, name), param=name) from None
    return sp


def base_sampling_params(req, max_new_tokens: int) -> dict:
    """The sampling fields of a chat/completion request (OpenAI names, see protocol.py) as
    validated engine sampling params (n=1: the server runs one engine request per choice)."""
    if req.logit_bias:
        raise bad_request("logit_bias is not supported", param="logit_bias")
    names = {f.name: OPENAI_NAMES.get(f.name, f.name) for f in dataclasses.fields(SamplingParams)
             if f.name not in OPENAI_EXCLUDED}
    sp = drop_empty({name: getattr(req, api) for name, api in names.items() if getattr(req, api) is not None})
    sp["max_new_tokens"] = max_new_tokens
    if isinstance(sp.get("stop"), str):
        sp["stop"] = [sp["stop"]]
    if isinstance(sp.get("min_new_tokens"), int):
        sp["min_new_tokens"] = min(sp["min_new_tokens"], max_new_tokens)
    return checked_sampling_params(sp, names)


def per_choice(sp: dict, index: int) -> dict:
    """Choice `index` of n: its own seed, so seeded choices differ but repeat."""
    if index and sp.get("sampling_seed") is not None:
        return {**sp, "sampling_seed": sp["sampling_seed"] + index}
    return sp


MAX_SCHEMA_DEPTH = 100  # nesting levels (real schemas: up to ~60); jsonschema recurses past ~120
MAX_SCHEMA_NODES = 10_000  # objects and arrays (real schemas: up to ~6,000); bounds check_schema's time


def _schema_size(schema) -> tuple[int, int]:
    """(objects + arrays, nesting depth) of a JSON value, counted without recursion; stops
    counting once a limit is passed."""
    nodes, depth, stack = 0, 0, [(schema, 1)]
    while stack and nodes <= MAX_SCHEMA_NODES and depth <= MAX_SCHEMA_DEPTH:
        value, level = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        nodes, depth = nodes + 1, max(depth, level)
        stack.extend((child, level + 1) for child in children)
    return nodes, depth


def validate_schema(schema, param: str) -> dict:
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise bad_request(f"{param} is not valid JSON: {e}", param=param) from None
    if not isinstance(schema, dict):
        raise bad_request(f"{param} must be a JSON object (a JSON schema)", param=param)
    nodes, depth = _schema_size(schema)
    if depth > MAX_SCHEMA_DEPTH:
        raise bad_request(f"{param} is nested more than {MAX_SCHEMA_DEPTH} levels deep", param=param)
    if nodes > MAX_SCHEMA_NODES:
        raise bad_request(f"{param} has more than {MAX_SCHEMA_NODES} objects and arrays", param=param)
    try:
        import jsonschema
    except ImportError:  # the engine's grammar compiler still checks it
        return schema
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        raise bad_request(f"{param} is not a valid JSON schema: {e.message}", param=param) from None
    return schema


def response_format_constraint(rf) -> dict:
    """response_format -> {"json_schema": "<schema JSON>"} (or {} for text)."""
    if rf is None or rf.type == "text":
        return {}
    if rf.type == "json_object":
        return {"json_schema": json.dumps({"type": "object"})}
    if rf.json_schema is None:
        raise bad_request("response_format.json_schema is required when type is 'json_schema'",
                          param="response_format.json_schema")
    schema = rf.json_schema.schema_ if rf.json_schema.schema_ is not None else {}
    schema = validate_schema(schema, "response_format.json_schema.schema")
    return {"json_schema": json.dumps(schema)}


def vllm_constraint(req) -> dict:
    """vLLM's `structured_outputs` (or its older `guided_*` fields) -> our constraint."""
    so = req.structured_outputs
    given = {"json": req.guided_json, "regex": req.guided_regex, "choice": req.guided_choice,
             "grammar": req.guided_grammar}
    if so is not None:
        given.update(json=so.json_, regex=so.regex, choice=so.choice, grammar=so.grammar,
                     json_object={"type": "object"} if so.json_object else None)
    given = {k: v for k, v in given.items() if v is not None}
    if len(given) > 1:
        raise bad_request(f"structured outputs: one of json, regex, choice, grammar (got {sorted(given)})",
                          param="structured_outputs")
    if not given:
        return {}
    kind, value = next(iter(given.items()))
    if kind in ("json", "json_object"):
        schema = json.loads(value) if isinstance(value, str) else value
        return {"json_schema": json.dumps(validate_schema(schema, "structured_outputs.json"))}
    if kind == "choice":
        if not value:
            raise bad_request("structured outputs: choice needs at least one string", param="structured_outputs")
        return {"regex": choices_regex(value)}
    return {"regex": value} if kind == "regex" else {"ebnf": value}


def merge_constraint(sp: dict, constraint: dict, source: str) -> dict:
    if constraint and any(sp.get(k) is not None for k in CONSTRAINT_FIELDS):
        raise bad_request(f"{source} cannot be combined with regex or ebnf (one constraint per request)")
    return {**sp, **constraint}


# ---- results ----------------------------------------------------------------------
def abort_error(meta: dict) -> APIError | None:
    """An engine abort with a message, as the error the client should get."""
    reason = meta.get("finish_reason") or {}
    if reason.get("type") != "abort":
        return None
    return APIError(reason.get("status_code") or 400, reason.get("message") or "the request was aborted")


def finish_reason(meta: dict) -> str | None:
    reason = meta.get("finish_reason")
    return None if reason is None else reason["type"]


def matched_stop(meta: dict):
    reason = meta.get("finish_reason") or {}
    return reason.get("matched")


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def finite(x) -> float | None:
    if x is None:
        return None
    return x if math.isfinite(x) else -9999.0


def _token_entry(item) -> dict:
    lp, _, text = item
    text = text or ""
    return {"token": text, "logprob": finite(lp), "bytes": list(text.encode("utf-8"))}


def chat_logprobs(meta: dict, start: int, end: int) -> dict:
    """OpenAI chat `logprobs` for output tokens [start, end)."""
    tokens = meta.get("output_token_logprobs") or []
    tops = meta.get("output_top_logprobs") or []
    content = []
    for k in range(start, min(end, len(tokens))):
        entry = _token_entry(tokens[k])
        entry["top_logprobs"] = [_token_entry(t) for t in (tops[k] if k < len(tops) and tops[k] else [])]
        content.append(entry)
    return {"content": content}


def completion_logprobs(meta: dict, start: int, end: int, offset: int, echo_prompt: bool = False) -> dict:
    """OpenAI legacy completion `logprobs` for output tokens [start, end), with the
    prompt's tokens first when echoing. `offset` is the text offset of the first token."""
    items, tops = [], []
    if echo_prompt:
        items += meta.get("input_token_logprobs") or []
        tops += meta.get("input_top_logprobs") or []
    out_items = (meta.get("output_token_logprobs") or [])[start:end]
    out_tops = (meta.get("output_top_logprobs") or [])[start:end]
    items, tops = items + list(out_items), tops + list(out_tops)
    result: dict = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for k, (lp, _, text) in enumerate(items):
        text = text or ""
        result["tokens"].append(text)
        result["token_logprobs"].append(finite(lp))
        top = tops[k] if k < len(tops) else None
        result["top_logprobs"].append(None if top is None else {t[2] or "": finite(t[0]) for t in top})
        result["text_offset"].append(offset)
        offset += len(text)
    return result

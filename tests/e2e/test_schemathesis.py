"""Property-based fuzzing of the generation endpoints from the server's own OpenAPI
schema: whatever schemathesis sends, the answer is never a 5xx.

The schema is bounded before fuzzing (max_tokens <= 3, n <= 2) so each request stays
fast on a CPU; everything else is generated as the server declares it.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.e2e.harness import MODEL

OPERATIONS = [("/v1/chat/completions", "POST"), ("/v1/completions", "POST"), ("/generate", "POST")]
MAX_TOKENS = {"type": "integer", "minimum": 0, "maximum": 3}
SMALL_N = {"type": "integer", "minimum": 1, "maximum": 2}


def bounded(raw: dict) -> dict:
    """Keep requests fast (few tokens) and mostly well-formed, so fuzzing gets past
    the first 400 and into the serving code; malformed input has its own tests."""
    schemas = raw["components"]["schemas"]
    token_ids = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 151000},
                 "minItems": 1, "maxItems": 64}
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        props = schemas[name]["properties"]
        props.update(max_tokens=MAX_TOKENS, n=SMALL_N, model={"type": "string", "enum": [MODEL]})
        for unsupported in ("max_completion_tokens", "best_of", "logit_bias", "suffix"):
            props.pop(unsupported, None)
        schemas[name]["required"] = sorted({*schemas[name].get("required", []), "max_tokens"})
    schemas["CompletionRequest"]["properties"]["prompt"] = {"anyOf": [
        {"type": "string", "minLength": 1}, token_ids,
        {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": 3}]}
    schemas["ContentPart"]["properties"]["type"] = {"type": "string", "enum": ["text"]}
    schemas["ContentPart"]["properties"]["text"] = {"type": "string"}
    schemas["ContentPart"]["required"] = ["type", "text"]
    native = schemas["NativeSamplingParams"]
    native["properties"].update(max_new_tokens=MAX_TOKENS, n=SMALL_N)
    native["properties"].pop("min_new_tokens", None)
    native["required"] = ["max_new_tokens"]
    native["additionalProperties"] = False
    generate = schemas["GenerateRequest"]["properties"]
    generate["sampling_params"] = {"$ref": "#/components/schemas/NativeSamplingParams"}
    generate["text"] = {"type": "string", "minLength": 1}
    generate["rid"] = {"type": "string"}
    generate.pop("input_ids", None)
    schemas["GenerateRequest"]["required"] = ["text", "sampling_params"]
    return raw


@pytest.fixture(scope="module")
def api_schema(server):
    raw = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    return schemathesis.openapi.from_dict(bounded(raw))


@pytest.mark.parametrize("path,method", OPERATIONS)
def test_no_server_errors(api_schema, server, path, method):
    operation = api_schema[path][method]
    @settings(max_examples=30, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def fuzz(case):
        case.call_and_validate(base_url=server.url, checks=[not_a_server_error], timeout=120)

    fuzz()
    server.wait_idle()

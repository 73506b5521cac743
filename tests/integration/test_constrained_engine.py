"""Grammar-constrained decoding through the engine (tiny random model, real tokenizer)."""

import json
import re
import time

import jsonschema
import pytest
from transformers import AutoTokenizer

from runtime.demo.checkpoint import demo_model_path
from tests.helpers import make_core, random_prompts, run_core, without_step_timing

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "email_address_primary"],
          "properties": {"name": {"type": "string", "maxLength": 12},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "email_address_primary": {"type": "string", "maxLength": 12}}}
IPV4 = r"((25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(25[0-5]|2[0-4]\d|1?\d?\d)"
ISO_DATE = r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"


@pytest.fixture(scope="module")
def path():
    return demo_model_path("qwen2", "tiny", "float32")


@pytest.fixture(scope="module")
def tok(path):
    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def core(path):
    return make_core(path, max_running_requests=8)


def texts(tok, results):
    return {rid: tok.decode(r["output_ids"], skip_special_tokens=True) for rid, r in results.items()}


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_json_schema_outputs_validate(core, tok, temperature):
    params = [{"max_new_tokens": 96, "temperature": temperature, "sampling_seed": i, "json_schema": json.dumps(PERSON)}
              for i in range(6)]
    res = run_core(core, random_prompts(lens=(3, 8, 20, 40, 60, 90)), params)
    stopped = 0
    for rid, text in texts(tok, res).items():
        if res[rid]["finish_reason"].kind.value == "stop":
            jsonschema.validate(json.loads(text), PERSON)
            stopped += 1
    assert stopped >= 3, "bounded fields should let most outputs finish"
    core.scheduler.check_no_leaks()


@pytest.mark.parametrize("pattern", [IPV4, ISO_DATE])
def test_regex(core, tok, pattern):
    res = run_core(core, random_prompts(lens=(5, 9, 13)),
                   [{"max_new_tokens": 32, "temperature": 1.0, "sampling_seed": i, "regex": pattern} for i in range(3)])
    for rid, text in texts(tok, res).items():
        assert res[rid]["finish_reason"].kind.value == "stop"
        assert re.fullmatch(pattern, text, flags=re.ASCII) or re.fullmatch(pattern, text), text


def test_choices_via_regex_alternation(core, tok):
    res = run_core(core, random_prompts(lens=(4, 6, 8, 10)),
                   [{"max_new_tokens": 8, "temperature": 1.0, "sampling_seed": i, "regex": "(sunny|rainy|cloudy)"}
                    for i in range(4)])
    assert set(texts(tok, res).values()) <= {"sunny", "rainy", "cloudy"}


def test_truncation_is_length_not_stop(core, tok):
    res = run_core(core, random_prompts(lens=(7,)), {"max_new_tokens": 5, "json_schema": json.dumps(PERSON),
                                                     "temperature": 0.0})
    assert res["r0"]["finish_reason"].kind.value == "length"
    assert len(res["r0"]["output_ids"]) == 5


def test_bad_specs_fail_only_that_request(core):
    bad = [{"max_new_tokens": 8, "json_schema": "{not json"},
           {"max_new_tokens": 8, "regex": "(unclosed"},
           {"max_new_tokens": 8, "temperature": 0.0}]
    res = run_core(core, random_prompts(lens=(5, 5, 5)), bad)
    assert res["r0"]["finish_reason"].kind.value == "abort" and "grammar" in res["r0"]["finish_reason"].message
    assert res["r1"]["finish_reason"].kind.value == "abort"
    assert res["r2"]["finish_reason"].kind.value in ("stop", "length")
    core.scheduler.check_no_leaks()


def slow_compiles(monkeypatch, core, seconds: float) -> None:
    """Make every compile of this core's grammar backend take `seconds` longer."""
    backend = core.grammars.compiler.backend
    compile_now = backend._compile

    def slow(spec):
        time.sleep(seconds)
        return compile_now(spec)

    monkeypatch.setattr(backend, "_compile", slow)


def test_compile_timeout_fails_the_request_and_engine_stays_healthy(path, monkeypatch):
    core = make_core(path, grammar_compile_timeout_s=0.3)
    slow_compiles(monkeypatch, core, 1.5)
    schema = {"type": "object", "properties": {f"k{i}": {"type": "string"} for i in range(40)}}
    res = run_core(core, random_prompts(lens=(5, 6)),
                   [{"max_new_tokens": 8, "json_schema": json.dumps(schema)}, {"max_new_tokens": 4}])
    assert "timed out after 0.3s" in res["r0"]["finish_reason"].message
    assert res["r1"]["finish_reason"].kind.value in ("stop", "length")
    core.scheduler.check_no_leaks()


def test_a_compile_the_backend_stops_fails_as_a_timeout_with_http_400(path, monkeypatch):
    """outlines stops its own compile at the timeout (CompileTimeoutError): the request
    gets the same timeout message as one the engine stopped waiting for, and a client
    gets 400 for it (the schema is too costly), not 503 (the server is not overloaded)."""
    from runtime.constrained import CompileTimeoutError
    from runtime.server.openai_common import abort_error

    core = make_core(path, grammar_compile_timeout_s=5.0)

    def stopped(spec):
        raise CompileTimeoutError("outlines did not finish indexing the regex grammar within 5.0s; "
                                  "the compile was stopped")

    monkeypatch.setattr(core.grammars.compiler.backend, "_compile", stopped)
    res = run_core(core, random_prompts(lens=(5, 6)), [{"max_new_tokens": 4, "regex": "[a-z]+"}, {"max_new_tokens": 4}])
    reason = res["r0"]["finish_reason"]
    assert reason.kind.value == "abort" and reason.message.startswith("grammar compilation timed out after 5.0s")
    assert abort_error({"finish_reason": {"type": "abort", "message": reason.message}}).status == 400
    assert res["r1"]["finish_reason"].kind.value in ("stop", "length")
    core.scheduler.check_no_leaks()


def test_compile_timeout_does_not_count_time_queued_behind_other_compiles(path, monkeypatch):
    """One compile worker, three grammars of 0.6 s each, timeout 1 s: the third waits
    1.2 s before its compile starts, yet none times out."""
    core = make_core(path, grammar_compile_timeout_s=1.0)
    slow_compiles(monkeypatch, core, 0.6)
    params = [{"max_new_tokens": 4, "regex": f"[a-z]{{{n}}}"} for n in (3, 4, 5)]
    res = run_core(core, random_prompts(lens=(5, 6, 7)), params)
    assert sorted(res) == ["r0", "r1", "r2"]
    assert all(r["finish_reason"].kind.value in ("stop", "length") for r in res.values()), res
    core.scheduler.check_no_leaks()


def test_jump_forward_saves_steps_and_keeps_outputs(path, tok):
    """Jump-forward drafts the text the grammar forces and verifies it: fewer steps, the same tokens."""
    schema = {"type": "object", "additionalProperties": False,
              "required": ["customer_identifier_code", "shipping_destination_country"],
              "properties": {"customer_identifier_code": {"type": "integer", "minimum": 0, "maximum": 99},
                             "shipping_destination_country": {"enum": ["france", "japan"]}}}
    params = {"max_new_tokens": 64, "temperature": 0.0, "json_schema": json.dumps(schema)}
    prompts = random_prompts(lens=(6, 12, 30))
    plain = make_core(path, disable_jump_forward=True)
    jump = without_step_timing(make_core(path))
    off = run_core(plain, prompts, params)
    on = run_core(jump, prompts, params)
    for rid, text in texts(tok, on).items():
        assert on[rid]["output_ids"] == off[rid]["output_ids"]
        assert on[rid]["finish_reason"].kind.value == "stop"
        jsonschema.validate(json.loads(text), schema)
    assert plain.scheduler.stats["verify_steps"] == 0
    assert jump.scheduler.stats["accepted_draft_tokens"] > 10
    steps_on = sum(jump.scheduler.stats[k] for k in ("decode_steps", "extend_steps", "verify_steps"))
    steps_off = sum(plain.scheduler.stats[k] for k in ("decode_steps", "extend_steps", "verify_steps"))
    assert steps_on < steps_off
    jump.scheduler.check_no_leaks()

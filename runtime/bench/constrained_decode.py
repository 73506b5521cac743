"""Decode throughput with and without a grammar, and the effect of jump-forward,
measured in one run on the same engine settings (part of `radixflow bench grammar`)."""

from __future__ import annotations

import json
import random
import statistics
import time

# long fixed keys: the grammar forces most of the text between the values
ORDER_SCHEMA = {
    "type": "object", "additionalProperties": False,
    "required": ["customer_identifier_code", "shipping_destination_country",
                 "is_priority_delivery_requested", "order_notes_for_the_warehouse"],
    "properties": {
        "customer_identifier_code": {"type": "integer", "minimum": 0, "maximum": 9999},
        "shipping_destination_country": {"enum": ["france", "japan", "brazil", "kenya"]},
        "is_priority_delivery_requested": {"type": "boolean"},
        "order_notes_for_the_warehouse": {"type": "string", "maxLength": 40},
    },
}


def _timed(engine, prompts, params) -> tuple[float, list[dict]]:
    engine.flush_cache()  # every timed run prefills its prompts afresh
    start = time.perf_counter()
    results = engine.generate(input_ids=prompts, sampling_params=params)
    return time.perf_counter() - start, results


def _steps(engine) -> int:
    info = engine.get_server_info()
    return info["decode_steps"] + info["extend_steps"] + info["verify_steps"]


def run_decode_comparison(model_path: str, dtype: str, batch_size: int = 16, max_new_tokens: int = 96,
                          seed: int = 0, repeats: int = 3) -> dict:
    """Each timed batch is first run once untimed (warm-up: memory, compiled grammar), then
    the compared variants alternate `repeats` times; medians are reported."""
    from runtime.engine.api import Engine

    rng = random.Random(seed)
    prompts = [[rng.randrange(151_643) for _ in range(64)] for _ in range(batch_size)]
    schema = json.dumps(ORDER_SCHEMA)
    report: dict = {"batch_size": batch_size, "repeats": repeats, "schema": ORDER_SCHEMA}
    greedy = [{"max_new_tokens": max_new_tokens, "temperature": 0.0, "json_schema": schema}
              for _ in range(batch_size)]
    jump_runs = {}
    for jump in (False, True):
        with Engine(model_path, dtype=dtype, max_running_requests=batch_size, max_total_tokens=16384,
                    disable_jump_forward=not jump) as engine:
            if not jump:  # unconstrained baseline: the same number of tokens per request as constrained
                sampled = [{"max_new_tokens": max_new_tokens, "temperature": 1.0, "sampling_seed": i,
                            "json_schema": schema} for i in range(batch_size)]
                _, con = _timed(engine, prompts, sampled)  # warm-up; seeded, so every run is the same
                lengths = [len(r["output_ids"]) for r in con]
                free = [{"max_new_tokens": n, "ignore_eos": True, "temperature": 1.0, "sampling_seed": i}
                        for i, n in enumerate(lengths)]
                times: dict[str, list[float]] = {"constrained": [], "unconstrained": []}
                for _ in range(repeats):
                    times["unconstrained"].append(_timed(engine, prompts, free)[0])
                    times["constrained"].append(_timed(engine, prompts, sampled)[0])
                t_con, t_free = statistics.median(times["constrained"]), statistics.median(times["unconstrained"])
                report["constrained_tokens_per_s"] = round(sum(lengths) / t_con, 2)
                report["unconstrained_tokens_per_s"] = round(sum(lengths) / t_free, 2)
                report["constrained_vs_unconstrained"] = round(t_free / t_con, 3)
                report["runs_s"] = {k: [round(t, 2) for t in v] for k, v in times.items()}
                report["valid_json_of_stopped"] = _valid_fraction(con)
            _timed(engine, prompts, greedy)  # warm-up
            steps0 = _steps(engine)
            runs = [_timed(engine, prompts, greedy) for _ in range(repeats)]
            jump_runs[jump] = {
                "elapsed_s": round(statistics.median(t for t, _ in runs), 2),
                "steps": (_steps(engine) - steps0) // repeats,
                "output_tokens": sum(len(r["output_ids"]) for r in runs[0][1]),
                "texts": [r["text"] for r in runs[0][1]]}
    on, off = jump_runs[True], jump_runs[False]
    report["jump_forward"] = {
        "steps_saved": off["steps"] - on["steps"], "speedup": round(off["elapsed_s"] / on["elapsed_s"], 3),
        "identical_texts": sum(a == b for a, b in zip(on.pop("texts"), off.pop("texts"))),
        "of": batch_size}
    report["jump_forward_off"], report["jump_forward_on"] = off, on
    return report


def _valid_fraction(results: list[dict]) -> str:
    """Outputs that finished with `stop` and validate against the schema."""
    import jsonschema

    stopped = [r for r in results if r["meta_info"]["finish_reason"]["type"] == "stop"]
    valid = 0
    for r in stopped:
        try:
            jsonschema.validate(json.loads(r["text"]), ORDER_SCHEMA)
            valid += 1
        except (ValueError, jsonschema.ValidationError):
            pass
    return f"{valid}/{len(stopped)}"

"""Engine-level validity sweep (part of `radixflow bench grammar --generate`).

For one backend, every maskbench-dev schema is sent through the real engine twice,
greedy and sampled (temperature 1, seeded), with the `tiny` random-weight model (bf16
by default: twice as fast as fp32 here) and the real Qwen2.5 tokenizer. A request
either is refused (the backend cannot compile the schema: an `abort` naming the
reason), runs out of tokens (`length`), or stops; every output that stops must parse
as JSON and validate against its schema with `jsonschema` (the schema's own draft,
formats not asserted). Invalid ones are listed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

PROMPT = "Answer with one JSON value that matches the schema.\n"


def _validator(schema: dict):
    import jsonschema

    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema)


def _outcome(result: dict, schema: dict) -> tuple[str, str | None]:
    """-> (kind, detail): kind is refused / length / valid / invalid."""
    reason = result["meta_info"]["finish_reason"]
    if reason["type"] == "abort":
        return "refused", (reason.get("message") or "")[:200]
    if reason["type"] == "length":
        return "length", None
    try:
        value = json.loads(result["text"])
    except ValueError as e:
        return "invalid", f"not JSON: {e}"
    try:
        error = next(iter(_validator(schema).iter_errors(value)), None)
    except Exception as e:  # a schema jsonschema itself cannot handle (bad $ref, ...)
        return "unchecked", f"{type(e).__name__}: {e}"[:200]
    return ("valid", None) if error is None else ("invalid", error.message[:200])


def _generate_all(engine, prompt_ids: list[int], params: list[dict], batch: int) -> list[dict]:
    """Every request, at most `batch` in flight: a finished one is replaced at once (no
    chunk waits for its slowest request), and at most `batch` grammars wait to compile.
    The compile timeout counts from the start of each compile, so queueing behind slow
    compiles (outlines) does not turn into timeouts."""
    import asyncio

    async def run() -> list[dict]:
        slots, done = asyncio.Semaphore(batch), [0]

        async def one(p: dict) -> dict:
            async with slots:
                result = await engine.async_generate(input_ids=prompt_ids, sampling_params=p)
            done[0] += 1
            if done[0] % 500 == 0:
                print(f"  {done[0]}/{len(params)} requests done", flush=True)
            return result

        return await asyncio.gather(*(one(p) for p in params))

    return asyncio.run(run())


def sweep_backend(backend: str, groups: dict[str, list[Path]], model_path: str, max_new_tokens: int,
                  compile_timeout: float, batch: int = 64, on_subset=None) -> dict:
    """-> {"subsets": {subset: counts}, "ALL": counts, "invalid": [examples], "elapsed_s"}.
    Subsets run one after another on one engine; `on_subset(partial result)` is called after
    each, so a long sweep (outlines: ~45 min) can write what it has finished."""
    from runtime.engine.api import Engine

    start = time.perf_counter()
    report = {"subsets": {}, "ALL": {}, "invalid": [], "elapsed_s": 0.0}
    with Engine(model_path, grammar_backend=backend, grammar_compile_timeout_s=compile_timeout,
                max_running_requests=batch, max_total_tokens=batch * (max_new_tokens + 64)) as engine:
        prompt_ids = engine.tokenizer.encode(PROMPT, add_special_tokens=False)
        for subset, files in groups.items():
            jobs = []  # (file name, schema, mode, sampling params)
            for k, path in enumerate(files):
                schema = json.loads(path.read_text())["schema"]
                text = json.dumps(schema)
                for mode, extra in (("greedy", {"temperature": 0.0}),
                                    ("sampled", {"temperature": 1.0, "sampling_seed": 2 * k + 1})):
                    jobs.append((path.name, schema, mode,
                                 {"max_new_tokens": max_new_tokens, "json_schema": text, **extra}))
            results = _generate_all(engine, prompt_ids, [job[-1] for job in jobs], batch)
            counts = dict.fromkeys(("requests", "refused", "length", "valid", "invalid", "unchecked"), 0)
            for (name, schema, mode, _), result in zip(jobs, results):
                kind, detail = _outcome(result, schema)
                counts["requests"] += 1
                counts[kind] += 1
                if kind in ("invalid", "unchecked"):
                    report["invalid"].append({"file": name, "mode": mode, "kind": kind, "detail": detail,
                                              "text": result["text"][:300]})
            print(f"[{backend} generate] {subset}: {counts}", flush=True)
            report["subsets"][subset] = counts
            report["ALL"] = {k: sum(c[k] for c in report["subsets"].values()) for k in counts}
            report["elapsed_s"] = round(time.perf_counter() - start, 1)
            if on_subset is not None:
                on_subset(report)
        engine.check_no_leaks()
    return report


def markdown(results: dict, max_new_tokens: int) -> str:
    lines = ["\n## Generated outputs (engine, `tiny` model, greedy + sampled)\n",
             f"Two requests per schema (greedy; temperature 1 seeded), max_new_tokens {max_new_tokens}. "
             "`stopped valid` counts outputs that finished with `stop` and validate with jsonschema.\n",
             "| backend | subset | requests | refused | length | stopped valid | stopped invalid |",
             "|---|---|---|---|---|---|---|"]
    for backend, r in results.items():
        for subset, c in list(r["subsets"].items()) + [("ALL", r["ALL"])]:
            stopped = c["valid"] + c["invalid"] + c["unchecked"]
            lines.append(f"| {backend} | {subset} | {c['requests']} | {c['refused']} | {c['length']} | "
                         f"{c['valid']}/{stopped} | {c['invalid'] + c['unchecked']} |")
    return "\n".join(lines) + "\n"

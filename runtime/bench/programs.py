"""`radixflow bench programs`: the SGLang paper's workload shapes, written as frontend
programs (`runtime.lang`), run with the radix cache on and off in one invocation.

Workloads (text drawn from a fixed word list with a seed; gens decode a fixed number of
tokens, EOS ignored, so both sides do the same work; JSON stops when the schema is met):
  few-shot         a long k-shot block shared by every question (MMLU-style), short answers
  multi-turn       chats whose earlier turns are the next turn's prefix
  tree-of-thought  a question, 3 sampled plans (fork), 2 critiques of each (fork), a select
  json             records extracted from passages under a JSON schema, shared instructions
  react            a shared few-shot ReAct prompt, then thought / action / observation steps
Each workload is one `run_batch` over its programs (items run concurrently).

Both engines stay up; per repeat the side that goes first alternates; medians are reported.
Every engine request the programs make (gens, `select` scoring, the frontend's prefix
hints) is metered: prompt, cached and completion tokens. Writes JSON and markdown.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time

import runtime as rt
from runtime.bench.alternating import run_alternating
from runtime.lang.backends.runtime_backend import Runtime

DEFAULT_OUT = "docs/bench/programs.json"
WORKLOADS = ("few-shot", "multi-turn", "tree-of-thought", "json", "react")
WORDS = ("the city river market people house water light morning garden school road music window "
         "friend story mountain paper table evening forest village letter teacher summer winter "
         "bridge train kitchen doctor island museum harbor library festival farmer painter").split()
RECORD = {"type": "object", "properties": {"name": {"type": "string"}, "year": {"type": "integer"},
                                           "city": {"type": "string"}},
          "required": ["name", "year", "city"], "additionalProperties": False}


def add_parser(sub) -> None:
    p = sub.add_parser("programs", help="frontend programs (SGLang paper workloads), radix cache on vs off")
    p.add_argument("--model-path", default=None, help="default: the default model (SmolLM2-135M-Instruct)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--scale", type=float, default=1.0, help="shrink program counts and lengths (quick runs)")
    p.add_argument("--repeats", type=int, default=1, help="on/off runs per workload, alternated; medians")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=DEFAULT_OUT)
    p.set_defaults(func=run)


class MeteredRuntime(Runtime):
    """A `Runtime` that adds up the tokens of every engine request its programs make."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.totals = dict.fromkeys(("requests", "prompt_tokens", "cached_tokens", "completion_tokens"), 0)
        self._lock = threading.Lock()
        generate = self.engine.generate

        def metered(*a, **kw):
            out = generate(*a, **kw)
            with self._lock:
                for r in out if isinstance(out, list) else [out]:
                    meta = r["meta_info"]
                    self.totals["requests"] += 1
                    for key in ("prompt_tokens", "cached_tokens", "completion_tokens"):
                        self.totals[key] += meta[key]
            return out

        self.engine.generate = metered

    def take_totals(self) -> dict:
        with self._lock:
            totals, self.totals = self.totals, dict.fromkeys(self.totals, 0)
        return totals


# ---- the programs ----------------------------------------------------------------------
@rt.function
def few_shot(s, examples, question):
    s += examples
    s += "Question: " + question + "\nAnswer:" + rt.gen("answer", max_tokens=8)


@rt.function
def multi_turn(s, system, questions):
    s += rt.system(system)
    for i, question in enumerate(questions):
        s += rt.user(question) + rt.assistant(rt.gen(f"answer_{i}", max_tokens=32))


@rt.function
def tree_of_thought(s, question):
    s += rt.system("You solve problems by exploring several plans and criticising each.")
    s += rt.user(question)
    plans = s.fork(3)
    plans += rt.assistant(rt.gen("plan", max_tokens=24, temperature=0.8))
    for plan in plans:
        critiques = plan.fork(2)
        critiques += rt.user("Criticise this plan.") + rt.assistant(rt.gen("critique", max_tokens=16,
                                                                           temperature=0.8))
        critiques.join()
    plans.join()
    listing = "\n".join(f"{i + 1}. {p}" for i, p in enumerate(s["plan"]))
    s += rt.user(f"Which plan is best?\n{listing}") + rt.assistant(rt.select("best", ["1", "2", "3"]))


@rt.function
def json_decode(s, instructions, passage):
    s += rt.system(instructions)
    s += rt.user(passage)
    s += rt.assistant(rt.gen("record", json_schema=json.dumps(RECORD), max_tokens=64, ignore_eos=False))


@rt.function
def react(s, examples, question, observations):
    s += examples
    s += f"Question: {question}\n"
    for step, observation in enumerate(observations, 1):
        s += f"Thought {step}:" + rt.gen(f"thought_{step}", max_tokens=24)
        s += f"\nAction {step}: Search[{question.split()[-1]}]\nObservation {step}: {observation}\n"


# ---- workload data ---------------------------------------------------------------------
def _sentence(rng: random.Random, n: int = 12) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def _text(rng: random.Random, sentences: int) -> str:
    return " ".join(_sentence(rng) for _ in range(sentences))


def workload(name: str, scale: float, seed: int):
    """(program, list of argument dicts) for one workload."""
    rng = random.Random(seed)

    def n(x: int) -> int:
        return max(2, int(x * scale))

    if name == "few-shot":
        examples = "".join(f"Question: {_sentence(rng)}\nAnswer: {rng.choice(WORDS)}\n\n" for _ in range(n(40)))
        return few_shot, [{"examples": examples, "question": _sentence(rng)} for _ in range(n(32))]
    if name == "multi-turn":
        system = "You are a helpful assistant. " + _text(rng, n(20))
        return multi_turn, [{"system": system, "questions": [_sentence(rng) for _ in range(4)]} for _ in range(n(8))]
    if name == "tree-of-thought":
        return tree_of_thought, [{"question": _text(rng, 3)} for _ in range(n(4))]
    if name == "json":
        instructions = ("Extract the person's name, birth year and city from the passage as JSON with keys name, "
                        "year and city. " + _text(rng, n(10)))
        items = []
        for _ in range(n(16)):
            who, year, city = rng.choice(WORDS).capitalize(), rng.randint(1800, 2000), rng.choice(WORDS).capitalize()
            items.append({"instructions": instructions,
                          "passage": f"{_text(rng, 3)} {who} was born in {year} in {city}. {_text(rng, 3)}"})
        return json_decode, items
    if name == "react":
        examples = "".join(f"Question: {_sentence(rng)}\nThought 1: {_sentence(rng)}\nAction 1: Search[x]\n"
                           f"Observation 1: {_text(rng, 2)}\nThought 2: {_sentence(rng)}\nAction 2: Finish[y]\n\n"
                           for _ in range(n(6)))
        return react, [{"examples": examples, "question": _sentence(rng),
                        "observations": [_text(rng, 2) for _ in range(3)]} for _ in range(n(8))]
    raise ValueError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")


def run_workload(backend: MeteredRuntime, name: str, scale: float, seed: int) -> dict:
    program, items = workload(name, scale, seed)
    backend.engine.flush_cache()
    backend.take_totals()
    start = time.perf_counter()
    states = program.run_batch(items, backend=backend, temperature=0.0, ignore_eos=True)
    elapsed = time.perf_counter() - start
    errors = [repr(s.error()) for s in states if s.error() is not None]
    if errors:
        raise RuntimeError(f"{name}: {len(errors)} programs failed, first: {errors[0]}")
    totals = backend.take_totals()
    return {"elapsed_s": round(elapsed, 2), "programs": len(items), **totals,
            "programs_per_s": round(len(items) / elapsed, 3),
            "output_tokens_per_s": round(totals["completion_tokens"] / elapsed, 1),
            "hit_rate": round(totals["cached_tokens"] / max(totals["prompt_tokens"], 1), 4)}


def markdown(report: dict) -> str:
    lines = [f"Model `{report['model']}` ({report['dtype']}). Medians of {report['repeats']} alternated run(s) "
             "per side.\n",
             "| workload | programs | requests | prompt tokens | cache on | cache off | speedup | hit rate |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in report["workloads"].items():
        on, off = row["cache_on"], row["cache_off"]
        lines.append(f"| {name} | {on['programs']} | {on['requests']} | {on['prompt_tokens']} | "
                     f"{on['elapsed_s']} s ({on['output_tokens_per_s']} out tok/s) | "
                     f"{off['elapsed_s']} s ({off['output_tokens_per_s']} out tok/s) | "
                     f"**{row['speedup']}x** | {on['hit_rate']:.1%} |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> None:
    from runtime.models.resolve import resolve_model

    resolved = resolve_model(args.model_path)
    from runtime.bench import results

    report = {**results.header("programs", args), "model": resolved.served_name, "dtype": args.dtype,
              "scale": args.scale, "repeats": args.repeats,
              "workloads": {}}
    options = dict(dtype=args.dtype, max_total_tokens=65536)
    with MeteredRuntime(resolved.path, **options) as on, \
            MeteredRuntime(resolved.path, disable_radix_cache=True, **options) as off:
        for name in args.workloads.split(","):
            def side(backend):
                def once() -> dict:
                    row = run_workload(backend, name, args.scale, args.seed)
                    backend.engine.check_no_leaks()
                    return row
                return once

            row = run_alternating({"cache_on": side(on), "cache_off": side(off)}, args.repeats)
            for side in row.values():
                side["output_tokens_per_s"] = round(side["completion_tokens"] / side["elapsed_s"], 1)
            row["speedup"] = round(row["cache_off"]["elapsed_s"] / row["cache_on"]["elapsed_s"], 3)
            print(f"[{name}] on {row['cache_on']['elapsed_s']} s, off {row['cache_off']['elapsed_s']} s, "
                  f"speedup {row['speedup']}x, hit rate {row['cache_on']['hit_rate']:.1%}", flush=True)
            report["workloads"][name] = row
    print(markdown(report))
    for path in results.write(args.out, report, markdown(report)):
        print(f"wrote {path}")

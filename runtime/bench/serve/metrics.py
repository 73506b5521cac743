"""Per-request records of `radixflow bench serve` and their summary.

Times are `time.perf_counter()` seconds. A streamed request records when it started,
when each chunk with output arrived, and when it ended:
  TTFT  first output chunk - start
  TPOT  (end - first output chunk) / (completion tokens - 1), per request
  ITL   gaps between successive output chunks (all requests pooled)
  E2E   end - start
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class RequestRecord:
    workload: str
    session: int
    turn: int
    start: float
    end: float = 0.0
    chunk_times: list[float] = field(default_factory=list)  # arrival of each chunk that carried output
    prompt_tokens: int | None = None  # from the server's usage
    completion_tokens: int | None = None
    cached_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens, where reported
    ok: bool = True
    error: str | None = None
    valid: bool | None = None  # json-schema: the output parses and validates
    finish_reason: str | None = None  # as the server reported it ("length": cut off by max_tokens)
    tokens_counted: bool = False  # the server reported no usage: completion_tokens = output chunks
    tool_calls: int = 0

    @property
    def ttft(self) -> float | None:
        return self.chunk_times[0] - self.start if self.chunk_times else None

    @property
    def e2e(self) -> float:
        return self.end - self.start

    @property
    def tpot(self) -> float | None:
        n = self.completion_tokens
        if not self.chunk_times or n is None or n < 2:
            return None
        return (self.end - self.chunk_times[0]) / (n - 1)

    @property
    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.chunk_times, self.chunk_times[1:])]


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def stats(values: list[float]) -> dict[str, float]:
    """mean, median, p90, p99 (NaN when there are no values)."""
    mean = sum(values) / len(values) if values else math.nan
    return {"mean": mean, "median": percentile(values, 50), "p90": percentile(values, 90),
            "p99": percentile(values, 99)}


def summarize(records: list[RequestRecord], duration_s: float) -> dict:
    """Throughputs over the run's wall time, latency stats over successful requests."""
    ok = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    prompt = sum(r.prompt_tokens or 0 for r in ok)
    completion = sum(r.completion_tokens or 0 for r in ok)
    with_cache = [r for r in ok if r.cached_tokens is not None and r.prompt_tokens]
    checked = [r for r in ok if r.valid is not None]
    out = {
        "requests": len(records), "successes": len(ok), "errors": len(failed),
        "first_error": failed[0].error if failed else None,
        "duration_s": duration_s,
        "request_throughput": len(ok) / duration_s if duration_s > 0 else math.nan,
        "input_token_throughput": prompt / duration_s if duration_s > 0 else math.nan,
        "output_token_throughput": completion / duration_s if duration_s > 0 else math.nan,
        "prompt_tokens": prompt, "completion_tokens": completion,
        "cache_hit_rate": (sum(r.cached_tokens for r in with_cache) / sum(r.prompt_tokens for r in with_cache)
                           if with_cache else None),
        "valid_rate": sum(r.valid for r in checked) / len(checked) if checked else None,
        "tool_calls": sum(r.tool_calls for r in ok),
        "truncated": sum(r.finish_reason == "length" for r in ok),
        "usage_missing": sum(r.tokens_counted for r in ok),  # tokens counted as chunks, prompts unknown
        "ttft_s": stats([r.ttft for r in ok if r.ttft is not None]),
        "tpot_s": stats([r.tpot for r in ok if r.tpot is not None]),
        "itl_s": stats([gap for r in ok for gap in r.itls]),
        "e2e_s": stats([r.e2e for r in ok]),
    }
    return out

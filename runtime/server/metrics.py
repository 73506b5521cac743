"""Prometheus metrics, named `radixflow:*`, in a registry owned by one server; beside them
the engine gauges under the `vllm:*` names that routers score replicas on (llm-d's
inference scheduler, vLLM's production stack), so Radixflow replicas can sit behind them.

Counters and latency histograms are fed by the serving code as requests finish;
gauges that describe the engine (running/waiting requests, KV token usage, cache hit
rate) are refreshed from `Engine.get_server_info()` when `/metrics` is scraped.
Time to first token and inter-token latency are observed for streamed requests.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,  # noqa: F401  (re-exported for app.py)
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServerMetrics:
    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        r, self.labels = self.registry, {"model_name": model_name}

        def gauge(name, doc):
            return Gauge(f"radixflow:{name}", doc, labels, registry=r).labels(**self.labels)

        def counter(name, doc, extra=()):
            metric = Counter(f"radixflow:{name}", doc, labels + list(extra), registry=r)
            return metric if extra else metric.labels(**self.labels)

        def histogram(name, doc, buckets):
            return Histogram(f"radixflow:{name}", doc, labels, buckets=buckets, registry=r).labels(**self.labels)

        self.num_requests_running = gauge("num_requests_running", "Requests the engine is decoding")
        self.num_requests_waiting = gauge("num_requests_waiting", "Requests queued in the engine")
        self.num_requests_in_flight = gauge("num_requests_in_flight", "Engine requests admitted by the server")
        self.token_usage = gauge("token_usage", "Fraction of KV-pool tokens held by requests or locked")

        def vllm_gauge(name, doc):
            return Gauge(f"vllm:{name}", doc, labels, registry=r).labels(**self.labels)

        # the same quantities under vLLM's names (values as vLLM reports them)
        self.vllm_running = vllm_gauge("num_requests_running", "= radixflow:num_requests_running")
        self.vllm_waiting = vllm_gauge("num_requests_waiting", "= radixflow:num_requests_waiting")
        self.vllm_kv_usage = vllm_gauge("kv_cache_usage_perc", "KV-cache usage, 1 = full (= radixflow:token_usage)")
        self.cache_hit_rate = gauge("cache_hit_rate", "Prompt tokens served from the prefix cache / prompt tokens")
        # speculative decoding (grammar drafts included), counted by the engine since it started
        self.spec_verify_steps = gauge("spec_verify_steps", "Steps that verified drafts, since the engine started")
        self.spec_draft_tokens = gauge("spec_draft_tokens", "Draft tokens verified, since the engine started")
        self.spec_accepted_tokens = gauge("spec_accepted_tokens", "Draft tokens kept, since the engine started")
        self.spec_acceptance_rate = gauge("spec_acceptance_rate", "Draft tokens kept / draft tokens verified")
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens of finished requests")
        self.generation_tokens = counter("generation_tokens", "Generated tokens of finished requests")
        self.cached_tokens = counter("cached_tokens", "Prompt tokens served from the prefix cache")
        self._requests = counter("requests", "Finished requests by finish reason", ["finish_reason"])
        self.rejected_requests = counter("rejected_requests", "Requests refused because the server was full")
        self.engine_restarts = counter("engine_restarts", "Engine processes restarted after they died")
        self.time_to_first_token = histogram("time_to_first_token_seconds", "Time to first token (streamed)",
                                             _LATENCY_BUCKETS)
        self.inter_token_latency = histogram("inter_token_latency_seconds", "Time between output tokens (streamed)",
                                             _ITL_BUCKETS)
        self.e2e_latency = histogram("e2e_request_latency_seconds", "Request latency, arrival to last token",
                                     _LATENCY_BUCKETS)

    def observe_finished(self, meta: dict, e2e_s: float) -> None:
        """One engine request (one choice) ended; `meta` is its meta_info."""
        self.prompt_tokens.inc(meta.get("prompt_tokens", 0))
        self.generation_tokens.inc(meta.get("completion_tokens", 0))
        self.cached_tokens.inc(meta.get("cached_tokens", 0))
        reason = (meta.get("finish_reason") or {}).get("type", "unknown")
        self._requests.labels(**self.labels, finish_reason=reason).inc()
        self.e2e_latency.observe(e2e_s)

    def update_engine_state(self, info: dict) -> None:
        running, waiting = info.get("running", 0), info.get("waiting", 0)
        total = info.get("max_total_tokens") or 1
        free = info.get("available_tokens", total) + info.get("evictable_tokens", 0)
        usage = max(0.0, (total - free) / total)
        for gauge, value in ((self.num_requests_running, running), (self.vllm_running, running),
                             (self.num_requests_waiting, waiting), (self.vllm_waiting, waiting),
                             (self.token_usage, usage), (self.vllm_kv_usage, usage)):
            gauge.set(value)
        prompt = info.get("prompt_tokens", 0)
        self.cache_hit_rate.set(info.get("cached_tokens", 0) / prompt if prompt else 0.0)
        drafted, kept = info.get("draft_tokens", 0), info.get("accepted_draft_tokens", 0)
        self.spec_verify_steps.set(info.get("verify_steps", 0))
        self.spec_draft_tokens.set(drafted)
        self.spec_accepted_tokens.set(kept)
        self.spec_acceptance_rate.set(kept / drafted if drafted else 0.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class StreamTimer:
    """Feeds TTFT and inter-token latency for one streamed request."""

    def __init__(self, metrics: ServerMetrics, start: float) -> None:
        self.metrics, self.start, self.last, self.tokens = metrics, start, None, 0

    def tick(self, now: float, num_tokens: int) -> None:
        new = num_tokens - self.tokens
        if new <= 0:
            return
        if self.last is None:
            self.metrics.time_to_first_token.observe(now - self.start)
            new -= 1
            self.last = now
        if new > 0:
            gap = (now - self.last) / new
            for _ in range(new):
                self.metrics.inter_token_latency.observe(gap)
        self.last, self.tokens = now, num_tokens

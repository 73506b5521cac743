"""Engine replicas on Ray Serve behind one OpenAI/native API: `radixflow serve --replicas N`.

Two deployments (the layout of Ray Serve LLM: an ingress, then the model servers):
  RadixflowIngress (1 replica): our FastAPI app, unchanged (chat templates, tool calls,
      constraints, admission). Its engine is a `RayEngineClient`: each request is tokenized
      there and sent through a DeploymentHandle to one of
  RadixflowEngine (N replicas): a `runtime.Engine` each (its own engine process, KV pool and
      radix cache). Each reports, as Ray Serve routing stats, the chained page hash of every
      cached prefix that is a multiple of ROUTING_BLOCK_TOKENS long (`Engine.prefix_digest`).
The handle routes with `PrefixAwareRouter` (Ray Serve's RequestRouter API): a session
(`user`, the X-Session-ID header) stays on its replica; otherwise the replica holding the
longest prefix of the prompt, unless it is `imbalance_threshold` requests busier than the
least-loaded replica, which then takes it. policy="round_robin" is the baseline the bench
compares with.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import time
from typing import Any

from ray.serve.request_router import FIFOMixin, RequestRouter

from runtime.cache.page_hash import prefix_page_hashes
from runtime.prompt_check import check_prompt_text
from runtime.server.state import ROUTING_POLICIES

ROUTING_BLOCK_TOKENS = 16  # the router matches prompts in blocks of this many tokens
ROUTING_STATS_PERIOD_S = 0.5  # how often Ray Serve polls each replica's digest
RECENT_TTL_S = 4 * ROUTING_STATS_PERIOD_S  # what we routed counts as cached until digests show it


def block_pages(page_size: int) -> int:
    return max(1, ROUTING_BLOCK_TOKENS // page_size)


def block_hashes(input_ids: list[int], page_size: int, cache_salt: str | None) -> list[int]:
    """The chained hash of each whole block of the prompt (the same chain the radix cache keeps)."""
    step = block_pages(page_size)
    return prefix_page_hashes(input_ids, page_size, cache_salt)[step - 1::step]


class EngineReplica:
    """One engine; its methods are what the ingress calls through the handle."""

    def __init__(self, engine_options: dict) -> None:
        from runtime.engine.api import Engine

        self.engine = Engine(**engine_options)
        self.block_pages = block_pages(self.engine.config.page_size)

    def describe(self) -> dict:
        e = self.engine
        return {"info": e.info, "config": e.config, "model_path": e.model_path,
                "served_model_name": e.served_model_name, "max_prompt_bytes": e.max_prompt_bytes}

    async def generate(self, request: dict) -> Any:
        result = await self.engine.async_generate(**request)
        for one in result if isinstance(result, list) else [result]:
            one["meta_info"]["replica"] = _replica_tag()
        return result

    async def stream(self, request: dict):
        async for chunk in await self.engine.async_generate(**request, stream=True):
            yield chunk

    async def record_routing_stats(self) -> dict:
        """Polled by Ray Serve every ROUTING_STATS_PERIOD_S; read by the router as routing_stats."""
        digest = await asyncio.to_thread(self.engine.prefix_digest, self.block_pages)
        return {"prefix_hashes": digest["hashes"], "page_size": digest["page_size"], "at": time.time()}

    def server_info(self) -> dict:
        return {**self.engine.get_server_info(), "replica": _replica_tag()}

    def flush_cache(self) -> None:
        self.engine.flush_cache()

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()


def _replica_tag() -> str:
    from ray import serve

    return serve.get_replica_context().replica_tag


class RayEngineClient:
    """The server's engine (runtime.server.state.EngineClient) when the engines are Ray Serve
    replicas: prompts are tokenized here, so the router sees token ids."""

    def __init__(self, handle, description: dict, num_replicas: int) -> None:
        from transformers import AutoTokenizer

        self.handle, self.num_replicas = handle, num_replicas
        self.info = description["info"]
        cfg = description["config"]
        # admission at the ingress: every replica's running + queued requests
        self.config = dataclasses.replace(cfg, max_running_requests=cfg.max_running_requests * num_replicas,
                                          max_queued_requests=cfg.max_queued_requests * num_replicas)
        self.model_path = description["model_path"]
        self.served_model_name = description["served_model_name"]
        self.max_prompt_bytes = description["max_prompt_bytes"]
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)

    async def async_generate(self, prompt=None, sampling_params=None, input_ids=None, rid=None, **options):
        if input_ids is None:
            if not isinstance(prompt, str):
                raise ValueError("prompt must be a string (or pass input_ids)")
            check_prompt_text(prompt, self.max_prompt_bytes)
            input_ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        request = {"input_ids": input_ids, "sampling_params": sampling_params, "rid": rid, **options}
        if request.pop("stream", False):
            return _chunks(self.handle.options(stream=True).stream.remote(request))
        response = self.handle.generate.remote(request)
        try:
            return await response
        except asyncio.CancelledError:
            response.cancel()  # the replica's engine aborts the request
            raise

    def get_server_info(self) -> dict:
        return self.handle.server_info.remote().result()

    def flush_cache(self) -> None:
        raise RuntimeError("flush_cache is per engine; with --replicas, restart the deployment to empty every cache")

    def is_alive(self) -> bool:
        return True  # Ray Serve restarts a replica that dies; the handle routes around it

    def shutdown(self) -> None:
        pass  # the deployments belong to Ray Serve (serve.shutdown())


async def _chunks(stream):
    try:
        async for chunk in stream:
            yield chunk
    finally:
        stream.cancel()  # a no-op once it ended; otherwise the replica aborts the request


class RadixflowIngress:
    """The HTTP front: our FastAPI app over a RayEngineClient (built at replica start)."""

    async def __init__(self, engine, settings, num_replicas: int) -> None:
        description = await engine.describe.remote()
        self.client = RayEngineClient(engine, description, num_replicas)
        self.settings = settings

    def __serve_build_asgi_app__(self):
        from runtime.server.app import create_app

        return create_app(self.client, self.settings)


class PrefixAwareRouter(FIFOMixin, RequestRouter):
    """Ray Serve request router over the replicas' own radix-tree digests (see the module doc)."""

    def initialize_state(self, policy: str = "prefix", imbalance_threshold: int = 4, **kwargs) -> None:
        if policy not in ROUTING_POLICIES:
            raise ValueError(f"routing policy must be one of {ROUTING_POLICIES}, got {policy!r}")
        self.policy, self.imbalance_threshold = policy, imbalance_threshold
        self.sessions: dict[str, Any] = {}  # session -> replica id
        self.recent: dict[int, tuple[Any, float]] = {}  # block hash -> (replica id, when routed)
        self._digests: dict[Any, tuple[float, set]] = {}  # replica id -> (report time, hash set)
        self._turn = itertools.count()

    async def choose_replicas(self, candidate_replicas: list, pending_request=None) -> list[list]:
        if not candidate_replicas:
            return []
        if pending_request is None or not pending_request.args:
            return [candidate_replicas]
        ranked = self.rank(candidate_replicas, pending_request.args[0])
        return [[r] for r in ranked]  # most preferred first; Ray falls back down the list

    def rank(self, replicas: list, request: dict) -> list:
        """The replicas in order of preference for `request` (the dict RayEngineClient sends)."""
        if self.policy == "round_robin":
            start = next(self._turn) % len(replicas)
            return replicas[start:] + replicas[:start]
        load = {r.replica_id: self.replica_queue_len_cache.get(r.replica_id) or 0 for r in replicas}
        least = min(load.values())
        balanced = {r.replica_id for r in replicas if load[r.replica_id] - least <= self.imbalance_threshold}
        session = request.get("session_id")
        page_size = self._page_size(replicas)
        hashes = block_hashes(request["input_ids"], page_size, request.get("cache_salt")) if page_size else []
        matched = {r.replica_id: self._matched_blocks(r, hashes) for r in replicas}
        turn = next(self._turn)  # ties rotate, so sequential unrelated requests spread out
        by_load = sorted(replicas, key=lambda r: (load[r.replica_id], -matched[r.replica_id],
                                                  (replicas.index(r) - turn) % len(replicas)))
        sticky = self.sessions.get(session) if session else None
        if sticky in balanced:
            chosen = next(r for r in replicas if r.replica_id == sticky)
        else:
            best = max(replicas, key=lambda r: (matched[r.replica_id], -load[r.replica_id]))
            chosen = best if matched[best.replica_id] and best.replica_id in balanced else by_load[0]
        self._remember(chosen.replica_id, session, hashes)
        return [chosen] + [r for r in by_load if r is not chosen]

    def _page_size(self, replicas: list) -> int | None:
        sizes = {r.routing_stats.get("page_size") for r in replicas if r.routing_stats}
        return sizes.pop() if len(sizes) == 1 else None  # None: no digest yet (or mixed page sizes)

    def _matched_blocks(self, replica, hashes: list[int]) -> int:
        """How many leading blocks of the prompt this replica holds (its digest, or our routing since)."""
        stats = replica.routing_stats or {}
        at, cached = self._digests.get(replica.replica_id, (None, set()))
        if stats.get("at") != at:
            at, cached = stats.get("at"), set(stats.get("prefix_hashes", ()))
            self._digests[replica.replica_id] = (at, cached)
        now = time.time()
        count = 0
        for h in hashes:
            routed = self.recent.get(h)
            if h not in cached and not (routed and routed[0] == replica.replica_id and now - routed[1] < RECENT_TTL_S):
                break
            count += 1
        return count

    def _remember(self, replica_id, session: str | None, hashes: list[int]) -> None:
        if session:
            self.sessions[session] = replica_id
        now = time.time()
        for h in hashes:
            self.recent[h] = (replica_id, now)
        if len(self.recent) > 200_000:  # forget what the digests have had time to report
            self.recent = {h: v for h, v in self.recent.items() if now - v[1] < RECENT_TTL_S}


def build_app(engine_options: dict, settings, num_replicas: int, policy: str = "prefix",
              imbalance_threshold: int = 4):
    """The Ray Serve application: `serve.run(build_app(...))`."""
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    from runtime.config import EngineConfig

    cores = os.cpu_count() or 1
    engine_options = {"num_threads": max(1, cores // num_replicas), **engine_options}  # the replicas share the cores
    cfg = EngineConfig.from_options(**engine_options)
    capacity = cfg.max_running_requests + cfg.max_queued_requests  # Ray must not queue before the engine
    router = RequestRouterConfig(
        request_router_class=PrefixAwareRouter,
        request_router_kwargs={"policy": policy, "imbalance_threshold": imbalance_threshold},
        request_routing_stats_period_s=ROUTING_STATS_PERIOD_S, request_routing_stats_timeout_s=10)
    # num_cpus 0: an engine replica's work runs in its own engine process, not in the Ray actor
    engines = serve.deployment(EngineReplica, name="RadixflowEngine", num_replicas=num_replicas,
                               max_ongoing_requests=capacity, request_router_config=router,
                               ray_actor_options={"num_cpus": 0})
    ingress = serve.deployment(serve.ingress()(RadixflowIngress), name="RadixflowIngress", num_replicas=1,
                               max_ongoing_requests=capacity * num_replicas, ray_actor_options={"num_cpus": 0})
    return ingress.bind(engines.bind(engine_options), settings, num_replicas)


def run(engine_options: dict, settings, num_replicas: int, policy: str = "prefix", blocking: bool = True):
    """Start Ray (a local cluster unless RAY_ADDRESS names one) and Serve on settings.host:port."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=True)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(build_app(engine_options, settings, num_replicas, policy), name="radixflow", route_prefix="/",
              blocking=blocking)

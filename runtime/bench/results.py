"""What every `radixflow bench` results file carries: the command that wrote it (so it
can be rerun), when, on what machine, with which versions."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path


def argv(args: argparse.Namespace) -> list[str]:
    """The flags that reproduce `args` (defaults included, so the file says what ran)."""
    out = []
    for key, value in vars(args).items():
        if key in ("func", "command", "bench", "bench_command") or value in (None, False, []) or callable(value):
            continue
        flag = f"--{key.replace('_', '-')}"
        if isinstance(value, list):  # a repeatable flag (action="append"): once per value
            out += [part for v in value for part in (flag, shlex.quote(str(v)))]
        else:
            out += [flag] if value is True else [flag, shlex.quote(str(value))]
    return out


def machine() -> str:
    import torch

    from runtime.config import cpu_has_fast_bf16

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    isa = torch.backends.cpu.get_cpu_capability()
    if cpu_has_fast_bf16():
        isa += ", bf16 kernels: --dtype auto is bf16"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs ({isa}), "
            f"torch threads {torch.get_num_threads()}, load average {load:.1f} at start")


def versions(*packages: str) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in ("radixflow", "torch", *packages):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def header(name: str, args: argparse.Namespace, *packages: str) -> dict:
    """The first keys of a results file for `radixflow bench <name>`."""
    return {"benchmark": name, "command": f"radixflow bench {name} " + " ".join(argv(args)),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine(),
            "versions": versions(*packages)}


def floors_markdown(floors: list[dict], unit: str = "") -> list[str]:
    """Markdown lines of a benchmark's floors ({"what", "floor", "reached", "met"} each)."""
    rows = [f"| {f['what']}: >= {f['floor']}{unit} | {f['reached']}{unit} | {'yes' if f['met'] else 'no'} |"
            for f in floors]
    return ["", "| floor | reached | met |", "|---|---|---|", *rows]


def write(json_path: str | Path, report: dict, markdown: str | None = None) -> list[Path]:
    """The JSON file, and the markdown next to it (same name, .md) starting with the command."""
    path = Path(json_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    written = [path]
    if markdown is not None:
        md = path.with_suffix(".md")
        md.write_text(f"Written by `{report['command']}` on {report['machine']} ({report['created']}).\n\n"
                      + markdown.rstrip() + "\n")
        written.append(md)
    return written

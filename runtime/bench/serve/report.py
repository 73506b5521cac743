"""Tables and plots of `bench serve` / `bench compare` rows (matplotlib, no display)."""

from __future__ import annotations

import math
from pathlib import Path


def _ms(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{x * 1e3:.0f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def serve_markdown(rows: list[dict], plots: list[Path] = ()) -> str:
    head = ("| server | workload | conc. | ok | req/s | out tok/s | TTFT med / p99 ms | TPOT med ms | ITL med ms "
            "| E2E med / p99 s | cache hit | valid | tool calls | first error |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for row in rows:
        if "unsupported" in row:
            lines.append(f"| {row['server']} | {row['workload']} | {row['max_concurrency']} | "
                         f"not supported: {row['unsupported']} |" + " |" * 10)
            continue
        s = row["summary"]
        error = (s["first_error"] or "").replace("|", "/").replace("\n", " ")[:120]
        lines.append(
            f"| {row['server']} | {row['workload']} | {row['max_concurrency']} | {s['successes']}/{s['requests']} "
            f"| {s['request_throughput']:.2f} | {s['output_token_throughput']:.1f} "
            f"| {_ms(s['ttft_s']['median'])} / {_ms(s['ttft_s']['p99'])} | {_ms(s['tpot_s']['median'])} "
            f"| {_ms(s['itl_s']['median'])} | {s['e2e_s']['median']:.2f} / {s['e2e_s']['p99']:.2f} "
            f"| {_pct(s['cache_hit_rate'])} | {_pct(s['valid_rate'])} | {s['tool_calls']} | {error} |")
    images = "".join(f"\n![{p.stem}]({p.name})\n" for p in plots)
    return head + "\n".join(lines) + "\n" + images


def write_plots(out_json: str | Path, rows: list[dict]) -> list[Path]:
    """<stem>-latency-cdf.png (E2E and TTFT per server/workload) and, when a run swept
    concurrency, <stem>-throughput.png (output tok/s vs sessions in flight)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = [r for r in rows if "summary" in r and r["e2e_s"]]
    if not done:
        return []
    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for row in done:
        label = f"{row['server']} {row['workload']} c={row['max_concurrency']}"
        for ax, key in zip(axes, ("e2e_s", "ttft_s")):
            xs = row[key]
            if xs:
                ax.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post", label=label)
    for ax, title in zip(axes, ("end-to-end latency", "time to first token")):
        ax.set_xlabel("seconds")
        ax.set_ylabel("fraction of requests")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    paths.append(out.with_name(out.stem + "-latency-cdf.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for row in done:
        series.setdefault((row["server"], row["workload"]), []).append(
            (row["max_concurrency"], row["summary"]["output_token_throughput"]))
    if any(len(points) > 1 for points in series.values()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for (server, workload), points in sorted(series.items()):
            points.sort()
            ax.plot([c for c, _ in points], [t for _, t in points], marker="o", label=f"{server} {workload}")
        ax.set_xlabel("sessions in flight (max concurrency)")
        ax.set_ylabel("output tokens/s")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out.with_name(out.stem + "-throughput.png"))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths

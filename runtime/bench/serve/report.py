"""Tables and plots of `bench serve` / `bench compare` rows (matplotlib, no display)."""

from __future__ import annotations

import math
from pathlib import Path

from runtime.bench.profile import OUTSIDE_MODEL


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


def _num(x, fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def compare_markdown(report: dict, plots: list[Path] = ()) -> str:
    """Servers (version, start-up, memory), then per workload each server's medians and
    Radixflow's ratio against each peer, then every run's full row."""
    med, servers = report["medians"], report["servers"]
    names = [n for n in servers if n in med]
    peers = [n for n in names if n != "radixflow"]
    model = report["model"]
    out = [f"Model: `{model['name']}` ({model['hf_dir']}{', GGUF ' + model['gguf'] if model.get('gguf') else ''}).",
           "", "| server | version | start-up s | resident MiB | notes |", "|---|---|---|---|---|"]
    for name, st in servers.items():
        notes = "; ".join(f"{k}: {v}" for k, v in st.get("notes", {}).items())
        if "unavailable" in st:
            notes = f"not run: {st['unavailable']}" + (f"; {notes}" if notes else "")
        if st.get("start_errors"):
            notes = f"failed to start ({len(st['start_errors'])}x)" + (f"; {notes}" if notes else "")
        startup = statistics_median(st.get("startup_s"))
        memory = statistics_median(st.get("resident_mb"))
        out.append(f"| {name} | {st.get('version') or '-'} | {_num(startup, '.0f')} | {_num(memory, '.0f')} "
                   f"| {notes} |")
    workloads = sorted({w for n in names for w in med[n]})
    out += ["", "Output tokens/s (median over repeats; higher is better) and Radixflow's ratio to each peer:", ""]
    out += _ratio_table(med, names, peers, workloads, "output_token_throughput", 1.0, ".1f", ours_over_peer=True)
    out += ["", "Time to first token, median ms (lower is better), and each peer's TTFT over Radixflow's:", ""]
    out += _ratio_table(med, names, peers, workloads, "ttft_median_s", 1e3, ".0f", ours_over_peer=False)
    prof = servers.get("radixflow", {}).get("profile")
    out += _behind(med, servers, names, peers, workloads, prof)
    if prof:
        out += ["", f"Where Radixflow's engine process spends its busy time (py-spy, {prof['busy_samples']} busy "
                f"samples, an extra unmeasured pass over the same workloads; {prof['idle_samples']} idle):", "",
                "| stage | share |", "|---|---|"]
        out += [f"| {k} | {v:.0%} |" for k, v in prof["stages"].items()]
        out += ["", "| function (innermost of ours) | share |", "|---|---|"]
        out += [f"| `{k}` | {v:.1%} |" for k, v in prof["functions"]]
    out += ["", "Every run (cache hits as the server reports them; valid = outputs that parse and match the schema):",
            "", serve_markdown(report["rows"], plots)]
    return "\n".join(out)


def _ratio_table(med: dict, names: list[str], peers: list[str], workloads: list[str], key: str, scale: float,
                 fmt: str, ours_over_peer: bool) -> list[str]:
    """One row per workload: each server's median `key` (times `scale`), then the ratio of
    Radixflow's to each peer's (ours_over_peer) or of each peer's to Radixflow's, so that
    above 1x always means Radixflow is better."""
    ratio_names = [f"ours / {p}" if ours_over_peer else f"{p} / ours" for p in peers]
    lines = ["| workload | " + " | ".join(names + ratio_names) + " |", "|---|" + "---|" * (len(names) + len(peers))]
    for w in workloads:
        vals = {n: med[n].get(w, {}).get(key) for n in names}
        ours = vals.get("radixflow")
        ratios = [None if not (ours and vals[p]) else ours / vals[p] if ours_over_peer else vals[p] / ours
                  for p in peers]
        lines.append(f"| {w} | " + " | ".join(_num(None if vals[n] is None else vals[n] * scale, fmt) for n in names)
                     + " | " + " | ".join(_num(r, ".2f") + ("x" if r else "") for r in ratios) + " |")
    return lines


def _behind(med: dict, servers: dict, names: list[str], peers: list[str], workloads: list[str],
            prof: dict | None) -> list[str]:
    """A sentence naming where Radixflow is behind a peer, and why from the profile. A
    workload a peer has a note on (it lacks the feature: e.g. it ignores response_format)
    is not a like-for-like race and is left out."""
    if "radixflow" not in names:
        return []
    behind = []
    for w in workloads:
        ours = med["radixflow"].get(w, {}).get("output_token_throughput")
        for p in peers:
            theirs = med[p].get(w, {}).get("output_token_throughput")
            if w in servers.get(p, {}).get("notes", {}):
                continue
            if ours and theirs and ours < theirs:
                behind.append(f"{w} vs {p} ({ours / theirs:.2f}x)")
    if not behind:
        return ["", "Radixflow is ahead of every peer on every workload in output tokens/s."]
    text = "Radixflow is behind on output tokens/s: " + ", ".join(behind) + "."
    if prof:
        stages = sorted(prof["stages"].items(), key=lambda kv: -kv[1])
        top = [f"{share:.0%} in {stage}" for stage, share in stages[:3]]
        text += f" Why, from the profile below: the engine spends {top[0]} of its busy time, " + ", ".join(top[1:])
        outside = sum(share for stage, share in stages if stage in OUTSIDE_MODEL)
        text += (f"; scheduling, batch building and IPC take {outside:.0%}, so the gap is the model's own ops "
                 "(see the roofline benchmark for how far each phase is from this machine's limit)."
                 if outside < 0.1 else f"; scheduling, batch building and IPC take {outside:.0%}.")
    return ["", text]


def statistics_median(values) -> float | None:
    import statistics

    return statistics.median(values) if values else None


def write_compare_plot(out_json: str | Path, medians: dict) -> list[Path]:
    """<stem>-throughput-by-server.png: output tokens/s per workload, one bar per server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(medians)
    workloads = sorted({w for n in names for w in medians[n]})
    if not names or not workloads:
        return []
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(workloads)), 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        ys = [medians[name].get(w, {}).get("output_token_throughput") or 0 for w in workloads]
        ax.bar([k + i * width for k in range(len(workloads))], ys, width, label=name)
    ax.set_xticks([k + width * (len(names) - 1) / 2 for k in range(len(workloads))], workloads)
    ax.set_ylabel("output tokens/s (median)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out_json)
    path = out.with_name(out.stem + "-throughput-by-server.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]

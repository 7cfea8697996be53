"""Evaluation report: markdown tables (ours beside Router-R1's, labelled) and a Pareto plot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from routerops.evaluation import PAPER, PAPER_NQ_COST_MICRO_USD, SystemMetrics
from routerops.pool import Pool

__all__ = ["dominates", "pareto_plot", "render_report"]

BENCHMARKS = ("nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle")


def dominates(a: SystemMetrics, b: SystemMetrics) -> bool:
    """a has higher EM at lower or equal cost than b."""
    return a.em > b.em and a.usd_per_question <= b.usd_per_question


def pareto_plot(metrics: Sequence[SystemMetrics], path: Path, title: str = "EM vs cost") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    avg = [m for m in metrics if m.data_source == "average"]
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    # Baselines that pick the same model sit on one point (cheapest = Mistral-7B): one joined label.
    labels: dict[tuple[float, float], list[str]] = {}
    for m in avg:
        x = max(m.usd_per_question * 1e6, 1e-3)  # micro-USD; log axis needs > 0
        style = {"router": ("*", 220, "tab:red"), "oracle": ("D", 70, "tab:green"), "knn": ("s", 70, "tab:purple")}
        marker, size, color = style.get(m.system, ("o", 50, "tab:blue"))
        ax.scatter([x], [m.em], marker=marker, s=size, color=color, zorder=3)
        labels.setdefault((round(x, 6), round(m.em, 6)), []).append(m.system.replace("single:", ""))
    for (x, y), names in labels.items():
        ax.annotate(" = ".join(sorted(names, key=lambda n: ("-" in n, n))), (x, y), textcoords="offset points",
                    xytext=(6, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("mean cost per question (micro-USD, log scale)")
    ax.set_ylabel("exact match (macro average over benchmarks)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _row(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def render_report(metrics: Sequence[SystemMetrics], pool: Pool, decoding: Mapping[str, Any],
                  replay: Mapping[str, Any], plot: str | None = None) -> str:
    avg = {m.system: m for m in metrics if m.data_source == "average"}
    per = {(m.system, m.data_source): m for m in metrics if m.data_source != "average"}
    benches = [b for b in BENCHMARKS if any(k[1] == b for k in per)]
    lines = [f"# Router evaluation (pool {pool.pricing.label}, snapshot {pool.snapshot_id})", "",
             f"Decoding: {decoding.get('mode')} (seed {decoding.get('seed')}). "
             f"Candidate replies: {replay.get('replayed_from_recorded', 0)} of {replay.get('calls', 0)} calls "
             f"replayed from recorded scores, {replay.get('drawn_from_priors', 0)} drawn from priors.", "",
             "## Averages (macro over benchmarks)", "",
             _row(["system", "EM", "F1", "format-valid", "micro-USD / question", "calls / question",
                   "p50 / p95 latency (s)", "candidate failures"]),
             _row(["---"] * 8)]
    order = ["router", "knn", "oracle", "random", "cheapest", "most_expensive",
             *sorted(s for s in avg if s.startswith("single:"))]
    for s in [s for s in order if s in avg]:
        m = avg[s]
        lines.append(_row([s, f"{m.em:.3f}", f"{m.f1:.3f}", f"{m.format_valid:.3f}", f"{m.usd_per_question * 1e6:.1f}",
                           f"{m.calls_per_question:.2f}", f"{m.latency_p50_s:.3f} / {m.latency_p95_s:.3f}",
                           m.candidate_failures]))
    lines += ["", "## Exact match per benchmark (ours, then Router-R1's paper numbers, labelled)", "",
              _row(["system", *benches, "avg"]), _row(["---"] * (len(benches) + 2))]
    for s in [s for s in ["router", "knn", "oracle", "random", "cheapest", "most_expensive"] if s in avg]:
        lines.append(_row([s, *(f"{per[(s, b)].em:.3f}" if (s, b) in per else "" for b in benches),
                           f"{avg[s].em:.3f}"]))
    for name, row in PAPER.items():
        vals = [row.get(b) for b in benches]
        shown = [v for v in vals if v is not None]
        lines.append(_row([name, *(f"{v:.3f}" if v is not None else "" for v in vals),
                           f"{sum(shown) / len(shown):.3f}" if shown else ""]))
    lines += ["", "Router-R1's NQ cost (paper, micro-USD per question): "
              + ", ".join(f"{k}: {v}" for k, v in PAPER_NQ_COST_MICRO_USD.items()) + ".", ""]
    if "router" in avg:
        r = avg["router"]
        lines += ["## Router call share", "", _row(["model", "share"]), _row(["---", "---"])]
        lines += [_row([k, f"{v:.3f}"]) for k, v in r.call_share.items()]
        lines.append("")
        if "random" in avg:
            verdict = "dominates" if dominates(r, avg["random"]) else "does NOT dominate"
            lines.append(f"The router {verdict} the random baseline (EM {r.em:.3f} vs {avg['random'].em:.3f}, "
                         f"{r.usd_per_question * 1e6:.1f} vs {avg['random'].usd_per_question * 1e6:.1f} micro-USD).")
        if "oracle" in avg:
            o = avg["oracle"]
            lines.append(f"Distance from the oracle (an upper bound): EM {o.em - r.em:+.3f}, "
                         f"cost {(o.usd_per_question - r.usd_per_question) * 1e6:+.1f} micro-USD per question.")
        lines.append("")
    if plot:
        lines += [f"![EM against cost]({plot})", ""]
    return "\n".join(lines)

"""Evaluation report: markdown tables (ours beside Router-R1's, labelled) and a Pareto plot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from routerops.evaluation import (
    FIXED_BASELINES,
    PAPER,
    PAPER_NQ_COST_MICRO_USD,
    Decoding,
    PairedDifference,
    SystemMetrics,
    Verdict,
)
from routerops.pool import Pool

__all__ = ["pareto_figure", "pareto_plot", "render_report", "render_summary"]

BENCHMARKS = ("nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle")


def pareto_plot(metrics: Sequence[SystemMetrics], path: Path, title: str = "EM vs cost") -> Path:
    """EM against mean cost per question (log scale) for every system's macro average, as a PNG."""
    import matplotlib.pyplot as plt

    fig = pareto_figure(metrics, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def pareto_figure(metrics: Sequence[SystemMetrics], title: str = "EM vs cost") -> Any:
    """The Pareto plot's matplotlib figure, labels placed clear of each other and of the markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    avg = [m for m in metrics if m.data_source == "average"]
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    # Baselines that pick the same model sit on one point (cheapest = Mistral-7B): one joined label.
    labels: dict[tuple[float, float], tuple[list[str], float]] = {}
    for m in avg:
        x = max(m.usd_per_question * 1e6, 1e-3)  # micro-USD; log axis needs > 0
        style = {"router": ("*", 220, "tab:red"), "oracle": ("D", 70, "tab:green"), "knn": ("s", 70, "tab:purple")}
        marker, size, color = style.get(m.system, ("o", 50, "tab:blue"))
        ax.scatter([x], [m.em], marker=marker, s=size, color=color, zorder=3)
        names, radius = labels.get((x, m.em), ([], 0.0))
        # Marker size s is an area in points squared; its radius in points is sqrt(s) / 2.
        labels[(x, m.em)] = ([*names, m.system.replace("single:", "")], max(radius, size ** 0.5 / 2))
    ax.set_xscale("log")
    ax.margins(x=0.06, y=0.1)  # room for labels at the edges
    ax.set_xlabel("mean cost per question (micro-USD, log scale)")
    ax.set_ylabel("exact match (macro average over benchmarks)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    _place_labels(fig, ax, [(" = ".join(sorted(names, key=lambda n: ("-" in n, n))), x, y, r)
                            for (x, y), (names, r) in labels.items()])
    return fig


# Label slots around a marker of radius r points, tried in order: right, above-right, below-right,
# left, above-left, below-left, above, below, then further out. Eleven systems crowd into ~200 px near 20-45 micro-USD.
_LABEL_SLOTS = ((1, 0, "left", "center"), (0.7, 1, "left", "bottom"), (0.7, -1, "left", "top"),
                (-1, 0, "right", "center"), (-0.7, 1, "right", "bottom"), (-0.7, -1, "right", "top"),
                (0, 1, "center", "bottom"), (0, -1, "center", "top"),
                (0.7, 2.5, "left", "bottom"), (0.7, -2.5, "left", "top"))


def _place_labels(fig: Any, ax: Any, items: Sequence[tuple[str, float, float, float]]) -> None:
    """Greedy placement: each label takes the first slot that stays inside the axes and clear of the
    markers and of the labels already placed; failing that, the first slot."""
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    px_per_pt = fig.dpi / 72
    placed: list[Any] = []
    for _, x, y, r in items:
        cx, cy = ax.transData.transform((x, y))
        placed.append(Bbox.from_extents(cx - r * px_per_pt, cy - r * px_per_pt, cx + r * px_per_pt, cy + r * px_per_pt))
    # The router's label first, then left to right: crowding is worst among the cheap points.
    for text, x, y, r in sorted(items, key=lambda it: (it[0] != "router", it[1], it[2])):
        for slot in _LABEL_SLOTS:
            ann = _annotate(ax, text, x, y, r + 2, slot)
            box = ann.get_window_extent(renderer)
            inside = box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(other) for other in placed):
                break
            ann.remove()
        else:  # nowhere clear: keep the label readable on the right of its marker
            box = _annotate(ax, text, x, y, r + 2, _LABEL_SLOTS[0]).get_window_extent(renderer)
        placed.append(box)


def _annotate(ax: Any, text: str, x: float, y: float, gap: float, slot: tuple[float, float, str, str]) -> Any:
    fx, fy, ha, va = slot
    return ax.annotate(text, (x, y), textcoords="offset points", xytext=(fx * gap, fy * gap), fontsize=8,
                       ha=ha, va=va)


def _significance(d: PairedDifference) -> str:
    def words(significant: bool, what: str) -> str:
        return f"the {what} difference is {'' if significant else 'not '}significant"
    return (f"At {d.confidence:.0%} (paired bootstrap) {words(d.em_significant, 'EM')} "
            f"({d.em_ci[0]:+.3f} .. {d.em_ci[1]:+.3f}) and {words(d.usd_significant, 'cost')} "
            f"({d.usd_ci[0] * 1e6:+.1f} .. {d.usd_ci[1] * 1e6:+.1f} micro-USD).")


def _row(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


# Provenance columns: (heading, the `CallOrigin` values counted in it).
_PROVENANCE = (("recorded score, as is", ("replay:recorded",)),
               ("recorded, changed by calibration", ("replay:calibrated",)),
               ("drawn from a prior", ("replay:prior",)),
               ("endpoint or cache", ("http", "cache")),
               ("failed or not called", ("failed", "unknown_model")))


def _provenance_lines(provenance: Mapping[str, Mapping[str, int]]) -> list[str]:
    lines = ["Where each candidate call's outcome came from, per phase of the run:", "",
             _row(["phase", "calls", *(h for h, _ in _PROVENANCE)]), _row(["---"] * (2 + len(_PROVENANCE)))]
    for phase, counts in provenance.items():
        lines.append(_row([phase, sum(counts.values()), *(sum(counts.get(o, 0) for o in origins)
                                                         for _, origins in _PROVENANCE)]))
    return [*lines, ""]


def _averages(metrics: Sequence[SystemMetrics], pool: Pool, decoding: Decoding,
              provenance: Mapping[str, Mapping[str, int]]) -> list[str]:
    avg = {m.system: m for m in metrics if m.data_source == "average"}
    lines = [f"# Router evaluation (pool {pool.pricing.label}, snapshot {pool.snapshot_id})", "",
             f"Decoding: {decoding.mode} (seed {decoding.seed}).", "",
             *_provenance_lines(provenance),
             "## Averages (macro over benchmarks)", "",
             "EM and F1 count a response only when its format is valid (the reward gives an invalid one "
             "-1); \"EM, any format\" reads the last answer whatever the format, as Router-R1 reports EM; "
             "\"gold in reply\" is a gold alias anywhere in the router's answer or in a single call's reply "
             "(baselines are asked for `Answer: <short answer>`, and EM reads that line).", "",
             _row(["system", "EM", "EM, any format", "gold in reply", "F1", "format-valid", "micro-USD / question",
                   "calls / question", "p50 / p95 latency (s)", "candidate failures"]),
             _row(["---"] * 10)]
    return [*lines, *_system_rows(avg), ""]


def _system_rows(avg: Mapping[str, SystemMetrics]) -> list[str]:
    order = ["router", "knn", "oracle", *FIXED_BASELINES, *sorted(s for s in avg if s.startswith("single:"))]
    return [_row([s, f"{m.em:.3f}", f"{m.em_any_format:.3f}", f"{m.contains_gold:.3f}", f"{m.f1:.3f}",
                  f"{m.format_valid:.3f}", f"{m.usd_per_question * 1e6:.1f}", f"{m.calls_per_question:.2f}",
                  f"{m.latency_p50_s:.3f} / {m.latency_p95_s:.3f}", m.candidate_failures])
            for s in order if (m := avg.get(s)) is not None]


def _slice_lines(metrics: Sequence[SystemMetrics], provenance: Mapping[str, Mapping[str, int]]) -> list[str]:
    """The held-out matrix slice, on its own: never part of the averages above."""
    if not metrics:
        return []
    avg = {m.system: m for m in metrics if m.data_source == "average"}
    n = max(m.questions for m in avg.values())
    return ["## Held-out matrix slice (recorded outcomes decide)", "",
            f"The quality matrix's own test split ({n} NQ and TriviaQA questions, never in training): for "
            "the models the matrix scored, the recorded outcome decides (calibrated to the priors); the "
            "others follow the latent difficulty the records imply. Macro average over its two sources, "
            "reported apart from the benchmark table and never mixed into it.", "",
            *_provenance_lines(provenance),
            _row(["system", "EM", "EM, any format", "gold in reply", "F1", "format-valid", "micro-USD / question",
                  "calls / question", "p50 / p95 latency (s)", "candidate failures"]),
            _row(["---"] * 10), *_system_rows(avg), ""]


def _verdict_lines(v: Verdict | None, differences: Sequence[PairedDifference]) -> list[str]:
    if v is None:
        return []
    line = (f"The router {'dominates' if v.dominates_random else 'does NOT dominate'} the random baseline "
            f"(EM {v.router_em:.3f} vs {v.random_em:.3f}, {v.router_usd_per_question * 1e6:.1f} vs "
            f"{v.random_usd_per_question * 1e6:.1f} micro-USD).")
    vs_random = next((d for d in differences if d.baseline == "random"), None)
    if vs_random is not None:
        line += " " + _significance(vs_random)
    beaten = (f"Dominated beyond the paired interval (more accurate, and the router not cheaper beyond it) by: "
              f"{', '.join(v.dominated_beyond_ci)}." if v.dominated_beyond_ci
              else "No compared baseline dominates the router beyond the paired interval.")
    return [line, beaten, f"Distance from the oracle (an upper bound): EM {v.oracle_em_gap:+.3f}, "
                          f"cost {v.oracle_usd_gap * 1e6:+.1f} micro-USD per question.", ""]


def _differences(differences: Sequence[PairedDifference]) -> list[str]:
    if not differences:
        return []
    level = f"{differences[0].confidence:.0%}"
    lines = [f"## Router minus each baseline (paired bootstrap, {level} intervals)", "",
             f"Same questions for both; {differences[0].samples} resamples drawn within each benchmark. "
             "An interval that contains 0 means the data cannot tell the two apart.", "",
             _row(["baseline", "questions", "EM difference", f"{level} interval", "micro-USD difference",
                   f"{level} interval"]),
             _row(["---"] * 6)]
    for d in differences:
        lines.append(_row([d.baseline, d.questions, f"{d.em:+.3f}", f"{d.em_ci[0]:+.3f} .. {d.em_ci[1]:+.3f}",
                           f"{d.usd_per_question * 1e6:+.1f}",
                           f"{d.usd_ci[0] * 1e6:+.1f} .. {d.usd_ci[1] * 1e6:+.1f}"]))
    return [*lines, ""]


def render_report(metrics: Sequence[SystemMetrics], pool: Pool, decoding: Decoding,
                  provenance: Mapping[str, Mapping[str, int]],
                  plot: str | None = None, differences: Sequence[PairedDifference] = (),
                  verdict: Verdict | None = None, matrix_slice: Sequence[SystemMetrics] = (),
                  slice_provenance: Mapping[str, Mapping[str, int]] | None = None) -> str:
    """The full report: averages, the held-out matrix slice, EM per benchmark beside the paper's,
    call share, verdict, router-minus-baseline intervals, the plot."""
    avg = {m.system: m for m in metrics if m.data_source == "average"}
    per = {(m.system, m.data_source): m for m in metrics if m.data_source != "average"}
    benches = [b for b in BENCHMARKS if any(k[1] == b for k in per)]
    lines = _averages(metrics, pool, decoding, provenance) + _slice_lines(matrix_slice, slice_provenance or {})
    lines += ["## Exact match per benchmark (ours, then Router-R1's paper numbers, labelled)", "",
              _row(["system", *benches, "avg"]), _row(["---"] * (len(benches) + 2))]
    for s in [s for s in ["router", "knn", "oracle", *FIXED_BASELINES] if s in avg]:
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
        lines += ["## Router call share", "", _row(["model", "share"]), _row(["---", "---"])]
        lines += [_row([k, f"{v:.3f}"]) for k, v in avg["router"].call_share.items()]
        lines.append("")
        lines += _verdict_lines(verdict, differences)
    lines += _differences(differences)
    if plot:
        lines += [f"![EM against cost]({plot})", ""]
    return "\n".join(lines)


def render_summary(metrics: Sequence[SystemMetrics], pool: Pool, decoding: Decoding,
                   provenance: Mapping[str, Mapping[str, int]],
                   differences: Sequence[PairedDifference] = (), verdict: Verdict | None = None,
                   matrix_slice: Sequence[SystemMetrics] = (),
                   slice_provenance: Mapping[str, Mapping[str, int]] | None = None) -> str:
    """The short form that answers "should I deploy this router?": averages, the held-out matrix
    slice, verdict, intervals."""
    return "\n".join(_averages(metrics, pool, decoding, provenance)
                     + _slice_lines(matrix_slice, slice_provenance or {}) + _verdict_lines(verdict, differences)
                     + _differences(differences))

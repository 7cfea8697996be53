from __future__ import annotations

from routerops.evaluation import Decoding, PairedDifference, SystemMetrics, verdict
from routerops.report import pareto_figure, pareto_plot, render_report, render_summary

GREEDY = Decoding("greedy", 0, 1.0, 0.95)


def avg(system: str, em: float, micro_usd: float, **kw) -> SystemMetrics:
    return SystemMetrics(system, "average", 420, em, em, 1.0, micro_usd * 1e-6, 1.0, em, em, **kw)


# The crowded layout of a real local run: eleven systems, most between 20 and 46 micro-USD.
CROWDED = [
    avg("router", 0.240, 23.8, call_share={"Mixtral-8x22B-Instruct": 1.0}), avg("knn", 0.281, 25.1),
    avg("oracle", 0.798, 32.7), avg("random", 0.214, 46.4), avg("cheapest", 0.205, 20.4),
    avg("most_expensive", 0.295, 154.9), avg("single:Gemma-2-27B-Instruct", 0.217, 42.6),
    avg("single:LLaMA-3.1-70B-Instruct", 0.295, 154.9), avg("single:LLaMA-3.1-8B-Instruct", 0.195, 30.0),
    avg("single:Mistral-7B-Instruct", 0.205, 20.4), avg("single:Mixtral-8x22B-Instruct", 0.293, 20.4),
    avg("single:Qwen2.5-7B-Instruct", 0.152, 24.3),
]


def test_pareto_labels_join_coinciding_points_and_never_overlap() -> None:
    fig = pareto_figure(CROWDED, "EM vs cost")
    ax = fig.axes[0]
    texts = sorted(t.get_text() for t in ax.texts)
    assert "cheapest = Mistral-7B-Instruct" in texts
    assert "most_expensive = LLaMA-3.1-70B-Instruct" in texts
    assert len(texts) == 10 and "router" in texts  # 12 systems on 10 distinct points
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    for i, box in enumerate(boxes):
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, ax.texts[i]
        for j in range(i):
            assert not box.overlaps(boxes[j]), (ax.texts[i].get_text(), ax.texts[j].get_text())
    assert ax.get_xscale() == "log"


def test_pareto_plot_writes_a_png(tmp_path) -> None:
    path = pareto_plot(CROWDED, tmp_path / "sub" / "pareto.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def diff(baseline: str, em: float, em_ci: tuple[float, float], usd: float, usd_ci: tuple[float, float]):
    return PairedDifference("router", baseline, 420, em, em_ci, usd * 1e-6, (usd_ci[0] * 1e-6, usd_ci[1] * 1e-6),
                            0.95, 2000)


def test_report_states_dominance_significance_and_oracle_distance(pool) -> None:
    differences = [diff("random", 0.026, (-0.029, 0.081), -22.7, (-27.2, -18.3)),
                   diff("single:Mixtral-8x22B-Instruct", -0.052, (-0.074, -0.031), 3.3, (2.5, 4.2))]
    provenance = {"router": {"replay:recorded": 3, "replay:calibrated": 1, "replay:prior": 6},
                  "baselines": {"replay:prior": 9, "failed": 1}}
    text = render_report(CROWDED, pool, GREEDY, provenance, plot="pareto.png", differences=differences,
                         verdict=verdict(CROWDED, differences))
    assert "| router | 10 | 3 | 1 | 6 | 0 | 0 |" in text and "| baselines | 10 | 0 | 0 | 9 | 0 | 1 |" in text
    assert ("The router dominates the random baseline (EM 0.240 vs 0.214, 23.8 vs 46.4 micro-USD). "
            "At 95% (paired bootstrap) the EM difference is not significant (-0.029 .. +0.081) and the cost "
            "difference is significant (-27.2 .. -18.3 micro-USD).") in text
    assert "Distance from the oracle (an upper bound): EM +0.558, cost +8.9 micro-USD per question." in text
    assert "| single:Mixtral-8x22B-Instruct | 420 | -0.052 | -0.074 .. -0.031 | +3.3 | +2.5 .. +4.2 |" in text
    assert "| Router-R1-Qwen (paper, alpha=0) |" in text  # the paper's numbers, labelled as the paper's
    assert text.rstrip().endswith("![EM against cost](pareto.png)")
    # the summary is the report's answer to "deploy it?": averages, verdict and intervals, no more
    summary = render_summary(CROWDED, pool, GREEDY, provenance, differences, verdict(CROWDED, differences))
    assert "Distance from the oracle (an upper bound): EM +0.558" in summary
    assert "| single:Mixtral-8x22B-Instruct | 420 | -0.052 |" in summary
    assert "Exact match per benchmark" not in summary and "Router-R1-Qwen" not in summary


def test_report_says_when_the_router_does_not_dominate(pool) -> None:
    worse = [avg("router", 0.20, 50.0), avg("random", 0.214, 46.4), avg("oracle", 0.5, 30.0)]
    text = render_report(worse, pool, Decoding("sampled", 1, 1.0, 0.95), {}, verdict=verdict(worse))
    assert "The router does NOT dominate the random baseline" in text
    assert "Router minus each baseline" not in text  # no differences given, no table


def test_the_matrix_slice_is_reported_apart(pool) -> None:
    slice_metrics = [SystemMetrics("router", "average", 100, 0.31, 0.31, 1.0, 20e-6, 1.0, 0.31, 0.33),
                     SystemMetrics("oracle", "average", 100, 0.55, 0.55, 1.0, 9e-6, 1.0, 0.55, 0.55)]
    text = render_report(CROWDED, pool, GREEDY, {}, matrix_slice=slice_metrics,
                         slice_provenance={"router": {"replay:recorded": 40, "replay:prior": 60}})
    head, rest = text.split("## Held-out matrix slice (recorded outcomes decide)")
    assert "| router | 0.240 |" in head and "| router | 0.310 | 0.310 | 0.330 |" not in head
    assert "| router | 0.310 | 0.310 | 0.330 |" in rest and "| router | 100 | 40 | 0 | 60 | 0 | 0 |" in rest
    assert "(100 NQ and TriviaQA questions, never in training)" in rest
    assert "Held-out matrix slice" not in render_report(CROWDED, pool, GREEDY, {})

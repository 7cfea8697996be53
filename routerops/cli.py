"""`routerops` command line: pool validation, offline scoring, and asking the router."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from routerops.candidates.types import QuestionInfo
from routerops.config import Params, ParamsError, load_params
from routerops.keys import KeyRecord
from routerops.lineage_cli import lineage_app
from routerops.paths import default_params_file, default_pool_file, project_root
from routerops.pool import Pool, PoolError, load_pool
from routerops.rewards import (
    CallUsage,
    CostNormalizer,
    FrozenBoundsNormalizer,
    ScoreItem,
    SlidingWindowNormalizer,
    score_batch,
)
from routerops.rollout import TokenGenerator, Trajectory
from routerops.trace import render_trace, trajectory_json

app = typer.Typer(no_args_is_help=True, add_completion=False, help="RouterOps: cost-aware LLM routers.")
pool_app = typer.Typer(no_args_is_help=True, help="Candidate pool and price table.")
app.add_typer(pool_app, name="pool")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluation results.")
app.add_typer(eval_app, name="eval")
data_app = typer.Typer(no_args_is_help=True, help="The raw data snapshot (data/, tracked by data.dvc).")
app.add_typer(data_app, name="data")
prices_app = typer.Typer(no_args_is_help=True, help="Candidate prices from published price lists.")
app.add_typer(prices_app, name="prices")
keys_app = typer.Typer(no_args_is_help=True, help="API keys of the router service (hashed, with USD budgets).")
app.add_typer(keys_app, name="keys")
app.add_typer(lineage_app, name="lineage")


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _load_pool(path: Path | None) -> Pool:
    try:
        return load_pool(path or default_pool_file())
    except PoolError as exc:
        raise _fail(str(exc), 1) from None


@pool_app.command("validate")
def pool_validate(file: Annotated[Path | None, typer.Argument(help="pool file (default: pool.yaml)")] = None) -> None:
    """Validate a pool file; print its snapshot ids, candidates and prices."""
    pool = _load_pool(file)
    typer.echo(f"{pool.source_file}: OK  snapshot {pool.snapshot_id}  prices {pool.pricing.id}  "
               f"({pool.pricing.label}, effective {pool.pricing.effective_date})")
    for c in pool:
        price = c.price
        typer.echo(f"  {c.name:<26} in ${price.input_usd_per_mtok:>6.2f}/M  out ${price.output_usd_per_mtok:>6.2f}/M"
                   f"  {c.provider_model_id}")


@prices_app.command("pull")
def prices_pull(
    source: Annotated[str, typer.Option(help="a price list: a file, or an http(s) URL")],
    fmt: Annotated[str, typer.Option("--format", help="litellm | openrouter | pool")],
    pool_file: Annotated[Path | None, typer.Option("--pool", help="the pool to update (default: pool.yaml)")] = None,
    label: Annotated[str | None, typer.Option(help="label of the new price list (default: FORMAT-DATE)")] = None,
    effective_date: Annotated[str | None, typer.Option(help="ISO date the prices take effect (default: today)")]
    = None,
    dry_run: Annotated[bool, typer.Option(help="show the changes, write nothing")] = False,
) -> None:
    """Read a price list, map each candidate through pool.yaml's price_sources, convert to USD per
    1M tokens, validate, and write the new pricing block with its provenance (only when a price
    changed: a rewritten label alone would retrain for nothing)."""
    from datetime import UTC, date, datetime

    from routerops.io import write_text_atomic
    from routerops.prices import FORMATS, PriceSourceError, apply_to_pool_text, parse_prices, price_changes, read_source

    path = pool_file or default_pool_file()
    pool = _load_pool(path)
    if fmt not in FORMATS:
        raise _fail(f"--format {fmt!r}: one of {', '.join(FORMATS)}")
    try:
        effective = date.fromisoformat(effective_date) if effective_date else datetime.now(UTC).date()
    except ValueError:
        raise _fail(f"--effective-date {effective_date!r}: not an ISO date (YYYY-MM-DD)") from None
    try:
        pulled = parse_prices(read_source(source), fmt, pool, source)
        changes = price_changes(pool, pulled)
        if not changes:
            typer.echo(f"prices unchanged ({len(pool)} models, {fmt}: {source}); {path} not written")
            return
        text = apply_to_pool_text(path.read_text(encoding="utf-8"), pool, pulled,
                                  label=label or f"{fmt}-{effective.isoformat()}", effective=effective)
    except PriceSourceError as exc:
        raise _fail(str(exc), 1) from None
    for ch in changes:
        typer.echo(f"  {ch.model:<26} {ch.side:<6} {ch.old:>9.4f} -> {ch.new:>9.4f} USD/1M tokens")
    if dry_run:
        typer.echo(f"dry run: {len(changes)} price(s) would change; {path} not written")
        return
    write_text_atomic(path, text)
    new_pool = _load_pool(path)
    typer.echo(f"wrote {path}: pricing {pool.pricing.id} -> {new_pool.pricing.id} ({new_pool.pricing.label}, "
               f"{len(changes)} price(s) changed)")


@prices_app.command("impact")
def prices_impact(
    pool: Annotated[Path, typer.Option("--pool", help="the pool file with the new prices")],
    old_pool: Annotated[Path | None, typer.Option(help="the prices the evaluation ran under (default: pool.yaml)")]
    = None,
    trajectories: Annotated[Path | None, typer.Option(help="the champion's evaluation (default: "
                                                           "trajectories.parquet in evaluate_router.out_dir)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="the impact as JSON")] = False,
    markdown: Annotated[Path | None, typer.Option(help="also write the impact table and decision here")] = None,
) -> None:
    """What new prices do to the champion, with zero candidate calls: USD per question per system,
    the cost-aware objective, the cheapest correct model per question; and the decision (none,
    reprice or retrain, by params `retrain`). Exits 0 whatever the decision."""
    from routerops.evaluation import KnnEvidence, read_records
    from routerops.price_impact import RetrainRule, assess, render_impact

    params = _project_params()
    trajectories = trajectories or project_root() / params.evaluate_router.out_dir / "trajectories.parquet"
    if not trajectories.is_file():
        raise _fail(f"{trajectories}: no evaluation trajectories; run `dvc repro evaluate_router` first", 1)
    old, new = _load_pool(old_pool), _load_pool(pool)
    records = read_records(trajectories)
    try:
        impact = assess(records, old, new, alpha=params.rewards.alpha, rule=RetrainRule.of(params.retrain),
                        seed=params.evaluate_router.seed, knn=KnnEvidence.read(trajectories.parent),
                        include_prompt=params.rewards.include_prompt_cost)
    except ValueError as exc:
        raise _fail(str(exc), 1) from None
    text = render_impact(impact, old.pricing.label, new.pricing.label)
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(text, encoding="utf-8")
    typer.echo(json.dumps(impact.as_json(), indent=2) if as_json else text, nl=as_json)


# ---------------------------------------------------------------------------------------------
# score
# ---------------------------------------------------------------------------------------------


class _CallIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    model: str = Field(min_length=1)
    prompt_tokens: int = Field(0, ge=0)
    completion_tokens: int = Field(ge=0)


class _ScoreLine(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    response: str
    golden_answers: list[str] = Field(min_length=1)
    calls: list[_CallIn] = []
    alpha: float | None = Field(None, ge=0.0, le=1.0)

    @field_validator("golden_answers")
    @classmethod
    def _non_blank(cls, v: list[str]) -> list[str]:
        if any(not g.strip() for g in v):
            raise ValueError("gold answers must be non-blank")
        return v


def read_score_lines(path: Path, pool: Pool) -> list[_ScoreLine]:
    """Parse and check every line; the first bad one raises ValueError naming file and line."""
    lines: list[_ScoreLine] = []
    try:
        raw_lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror})") from None
    for n, raw in enumerate(raw_lines, 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ValueError(f"{path}:{n}: not valid UTF-8") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        try:
            line = _ScoreLine.model_validate(obj)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"]) or "<line>"
            raise ValueError(f"{path}:{n}: {loc}: {err['msg']}") from None
        for c in line.calls:
            if pool.resolve(c.model) is None:
                raise ValueError(f"{path}:{n}: calls: model {c.model!r} is not in the pool ({', '.join(pool.names)})")
        lines.append(line)
    return lines


@app.command("score")
def score(
    file: Annotated[Path, typer.Argument(help="JSONL: response, golden_answers, calls?, alpha?")],
    alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="cost weight for lines without 'alpha'")] = 0.0,
    outcome: Annotated[str, typer.Option(help="em or f1")] = "em",
    cost_bounds: Annotated[str | None, typer.Option(help="P5,P95 of sqrt(USD) for frozen normalisation")] = None,
    include_prompt: Annotated[bool, typer.Option(help="add prompt tokens x input price to cost")] = False,
    pool_file: Annotated[Path | None, typer.Option("--pool")] = None,
    params_file: Annotated[Path | None, typer.Option("--params", help="format rules from rollout.format")] = None,
) -> None:
    """Score responses offline; one JSON breakdown per input line.

    Without --cost-bounds the file is one batch for Router-R1's sliding-window normaliser. The
    format rules are the params' (`rollout.format`; the project's params.yaml by default).
    """
    if outcome not in ("em", "f1"):
        raise _fail(f"--outcome must be em or f1, got {outcome!r}")
    try:
        rules = load_params(params_file or default_params_file()).rollout.format.rules()
    except ParamsError as exc:
        raise _fail(str(exc), 1) from None
    pool = _load_pool(pool_file)
    try:
        lines = read_score_lines(file, pool)
    except ValueError as exc:
        raise _fail(str(exc), 1) from None
    normalizer: CostNormalizer = SlidingWindowNormalizer()
    if cost_bounds:
        try:
            lo, hi = (float(x) for x in cost_bounds.split(","))
        except ValueError:
            raise _fail(f"--cost-bounds must be two numbers 'P5,P95', got {cost_bounds!r}") from None
        normalizer = FrozenBoundsNormalizer(lo, hi)
    items = [ScoreItem(ln.response, ln.golden_answers,
                       [CallUsage(pool.get(c.model).name, c.completion_tokens, c.prompt_tokens) for c in ln.calls])
             for ln in lines]
    mode: Literal["em", "f1"] = "em" if outcome == "em" else "f1"
    alphas = [ln.alpha if ln.alpha is not None else alpha for ln in lines]
    results, _ = score_batch(items, pool, alphas, normalizer, mode, include_prompt, rules)
    for a, r in zip(alphas, results, strict=True):
        sys.stdout.write(json.dumps(r.as_dict() | {"alpha": a}) + "\n")


# ---------------------------------------------------------------------------------------------
# ask
# ---------------------------------------------------------------------------------------------


@app.command("ask")
def ask(
    question: Annotated[str, typer.Argument(help="the user question")],
    candidates: Annotated[str, typer.Option(help="replay (offline) or openai (endpoints in pool.yaml)")] = "replay",
    policy: Annotated[str, typer.Option(help="'scripted' or a local HuggingFace model directory")] = "scripted",
    route_to: Annotated[list[str] | None,
                        typer.Option("--route-to", help="scripted router: models to ask, in order")] = None,
    gold: Annotated[list[str] | None, typer.Option("--gold", help="gold alias(es), for scoring and replay")] = None,
    source: Annotated[str, typer.Option(help="data source of the question (replay priors)")] = "nq",
    params_file: Annotated[Path | None, typer.Option("--params", help="default: params.yaml")] = None,
    pool_file: Annotated[Path | None, typer.Option("--pool")] = None,
    data: Annotated[Path | None, typer.Option(
        help="raw snapshot holding the replay matrix (default: data/ when seeded, else ../shared/data)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the trajectory as JSON")] = False,
) -> None:
    """Answer one question with the router and print the trace, calls, tokens and dollars."""
    from routerops.candidates.replay import question_key
    from routerops.paths import shared_data_dir
    from routerops.policy import ScriptedRouter, load_transformers_policy
    from routerops.runtime import build_backend, route_questions
    from routerops.tokens import ByteTokenizer, Tokenizer

    if candidates not in ("replay", "openai"):
        raise _fail(f"--candidates must be replay or openai, got {candidates!r}")
    try:
        params = load_params(params_file or default_params_file())
    except ParamsError as exc:
        raise _fail(str(exc), 1) from None
    pool = _load_pool(pool_file)
    params = params.model_copy(update={"candidates": params.candidates.model_copy(update={"backend": candidates})})
    seeded = project_root() / params.build_dataset.raw_dir
    data_dir = data or (seeded if seeded.is_dir() else shared_data_dir())
    backends = build_backend(params.candidates, data_dir=data_dir,
                             include_prompt_cost=params.rewards.include_prompt_cost)
    info = QuestionInfo("cli", question, source, tuple(gold or ()))
    if backends.replay is not None and backends.replay.matrix is not None and not gold:
        known = backends.replay.matrix.questions.get(question_key(question))
        if known is not None:
            info = known
    if policy == "scripted":
        names = route_to or list(params.demo.route_to)
        for n in names:
            if pool.resolve(n) is None:
                raise _fail(f"--route-to {n!r} is not in the pool ({', '.join(pool.names)})")
        tokenizer: Tokenizer = ByteTokenizer()
        generator: TokenGenerator = ScriptedRouter(tokenizer, names)
        limits = params.rollout.limits()
    else:
        try:
            hf = load_transformers_policy(policy, greedy=True)
        except (FileNotFoundError, OSError, ValueError) as exc:
            raise _fail(str(exc), 1) from None
        tokenizer, generator, limits = hf.tokenizer, hf, params.router_limits()

    async def go() -> Trajectory:
        try:
            (t,) = await route_questions([info], params=params, pool=pool, tokenizer=tokenizer,
                                         generator=generator, backends=backends, limits=limits)
            return t
        finally:
            await backends.aclose()

    traj = asyncio.run(go())
    if as_json:
        typer.echo(json.dumps(trajectory_json(traj), indent=2))
    else:
        typer.echo(render_trace(traj))


@data_app.command("seed")
def data_seed(
    from_hub: Annotated[bool, typer.Option("--from-hub", help="download FlashRAG configs from the hub")] = False,
    dest: Annotated[Path | None, typer.Option(help="snapshot folder (default: data/)")] = None,
) -> None:
    """Fill data/ from ../shared/data (offline default) or the hub, then compare with data.dvc."""
    import subprocess

    from routerops.paths import shared_data_dir
    from routerops.snapshot import seed_from_hub, seed_from_shared

    dest = dest or project_root() / "data"
    try:
        res = seed_from_hub(dest) if from_hub else seed_from_shared(shared_data_dir(), dest)
    except (FileNotFoundError, ConnectionError) as exc:
        raise _fail(str(exc), 1) from None
    typer.echo(f"{dest}: {res.files} files, {res.bytes / 1e6:.1f} MB ({res.copied} written)")
    dvc_file = dest.parent / f"{dest.name}.dvc"
    if not dvc_file.is_file():
        typer.echo(f"no {dvc_file.name} yet: record this version with `dvc add {dest.name}` and commit {dvc_file.name}")
        return
    def status() -> dict[str, Any]:
        proc = subprocess.run([sys.executable, "-m", "dvc", "status", "--json", dvc_file.name],
                              cwd=dest.parent, capture_output=True, text=True)
        if proc.returncode != 0:
            raise _fail(f"dvc status failed: {proc.stderr.strip()}", 1)
        return dict(json.loads(proc.stdout or "{}"))

    changed = status()
    outs = [v for entry in changed.get(dvc_file.name, []) for v in entry.get("changed outs", {}).values()]
    if outs and set(outs) == {"not in cache"}:
        # A fresh clone: the workspace may be the recorded version with an empty DVC cache.
        # Caching it must leave data.dvc byte-identical; otherwise it is a new version.
        recorded = dvc_file.read_bytes()
        subprocess.run([sys.executable, "-m", "dvc", "commit", "-f", "-q", dvc_file.name], cwd=dest.parent,
                       capture_output=True, text=True)
        if dvc_file.read_bytes() == recorded:
            changed = status()
        else:
            dvc_file.write_bytes(recorded)
            changed = {dvc_file.name: ["modified"]}
    if not changed:
        typer.echo(f"matches the data version recorded in {dvc_file.name}")
        return
    typer.echo(f"{dest.name}/ differs from the version recorded in {dvc_file.name}: this is a new data version.\n"
               f"Record it with `dvc add {dest.name} && git add {dvc_file.name} && git commit`, then `dvc push`.")
    raise typer.Exit(3)


@app.command("train")
def train(
    backend: Annotated[str | None, typer.Option(help="local or verl (default: train_router.backend)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan or launch command; train nothing")] = False,
    out: Annotated[Path | None, typer.Option(help="where --dry-run writes the verl files")] = None,
    params_file: Annotated[Path | None, typer.Option("--params", help="default: params.yaml")] = None,
) -> None:
    """Train the router. `--backend verl --dry-run` validates the generated config against verl's
    own schema and prints the launch command; without --dry-run this runs `dvc repro train_router`
    so the run is recorded in the pipeline's lineage."""
    import subprocess

    root = project_root()
    params_file = params_file or default_params_file()
    out = out or root / ".routerops" / "verl-dry-run"
    try:
        params = load_params(params_file)
        tp = params.train_router
    except ParamsError as exc:
        raise _fail(str(exc), 1) from None
    chosen = backend or tp.backend
    if chosen not in ("local", "verl"):
        raise _fail(f"--backend must be local or verl, got {chosen!r}")
    if dry_run and chosen == "verl":
        from routerops.training.verl.launch import dry_run_report

        code, text = dry_run_report(params_file, out)
        typer.echo(text, nl=False)
        raise typer.Exit(code)
    if dry_run:
        lp = tp.local
        typer.echo(f"local backend: tiny Qwen2 ({lp.num_layers} layers, hidden {lp.hidden_size}, "
                   f"vocab {lp.vocab_size}); warm start {lp.copy_drills} copy drills, then {lp.context_drills} "
                   f"long-context drills + {lp.sft_examples} trajectories x {lp.sft_epochs} epochs; "
                   f"GRPO {lp.grpo_steps} steps x {lp.questions_per_step} "
                   f"questions x {lp.group_size} rollouts; alpha {params.rewards.alpha}; checkpoints every "
                   f"{lp.checkpoint_every} steps in {tp.checkpoint_dir}")
        return
    if chosen != tp.backend:
        raise _fail(f"params.yaml says train_router.backend: {tp.backend}; change it there (so the run's lineage "
                    f"records it) rather than with --backend")
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro", "train_router"], cwd=root)
    raise typer.Exit(proc.returncode)


@eval_app.command("reprice")
def eval_reprice(
    pool: Annotated[Path, typer.Option("--pool", help="the pool file with the new prices")],
    trajectories: Annotated[Path | None, typer.Option(help="default: trajectories.parquet in evaluate_router.out_dir")]
    = None,
    old_pool: Annotated[Path | None, typer.Option(help="prices the evaluation ran under (default: pool.yaml)")]
    = None,
    plot: Annotated[Path | None, typer.Option(help="where to draw the repriced Pareto plot")] = None,
    include_prompt: Annotated[bool, typer.Option(help="add prompt tokens x input price")] = False,
) -> None:
    """Recompute every metric and the Pareto plot under new prices from the stored trajectories.
    No candidate is called: costs are stored token counts x the new prices, and cheapest, most
    expensive, oracle and kNN choose again from the recorded single calls."""
    from routerops.evaluation import KnnEvidence, aggregate, read_records, reprice_records
    from routerops.report import pareto_plot

    try:
        params = load_params(default_params_file())
    except ParamsError as exc:
        raise _fail(str(exc), 1) from None
    out_dir = project_root() / params.evaluate_router.out_dir
    trajectories = trajectories or out_dir / "trajectories.parquet"
    if not trajectories.is_file():
        raise _fail(f"{trajectories}: no evaluation trajectories; run `dvc repro evaluate_router` first", 1)
    old, new = _load_pool(old_pool), _load_pool(pool)
    records = read_records(trajectories)
    unpriced = sorted({c.model for r in records for c in r.calls if c.ok} - set(new.names))
    if unpriced:
        raise _fail(f"{pool}: no price for model(s) {', '.join(unpriced)} that the evaluation called", 1)
    knn = KnnEvidence.read(trajectories.parent)
    before = {m.system: m for m in aggregate(records, old, include_prompt) if m.data_source == "average"}
    try:
        after = reprice_records(records, new, include_prompt, seed=params.evaluate_router.seed, knn=knn)
    except (KeyError, ValueError) as exc:
        raise _fail(str(exc), 1) from None
    after_avg = {m.system: m for m in after if m.data_source == "average"}
    typer.echo(f"repriced {len(records)} records from {trajectories.name}: {old.pricing.label} -> "
               f"{new.pricing.label} (0 candidate calls); cheapest, most expensive, oracle"
               + (" and kNN choose again" if knn else " choose again; kNN keeps its choices (no knn.json beside "
                                                       "the trajectories)"))
    typer.echo(f"{'system':<34} {'EM old':>6} {'new':>6} {'micro-USD/q old':>16} {'new':>10} {'change':>8}")
    for s in sorted(before):
        b, a = before[s], after_avg[s]
        change = (a.usd_per_question / b.usd_per_question - 1) * 100 if b.usd_per_question else 0.0
        typer.echo(f"{s:<34} {b.em:>6.3f} {a.em:>6.3f} {b.usd_per_question * 1e6:>16.1f} "
                   f"{a.usd_per_question * 1e6:>10.1f} {change:>+7.1f}%")
    target = plot or trajectories.parent / f"pareto-{new.pricing.id}.png"
    pareto_plot(after, target, title=f"EM vs cost, repriced ({new.pricing.label})")
    typer.echo(f"Pareto plot under the new prices: {target}")


# ---------------------------------------------------------------------------------------------
# serving
# ---------------------------------------------------------------------------------------------


def _project_params() -> Params:
    try:
        return load_params(default_params_file())
    except ParamsError as exc:
        raise _fail(str(exc), 1) from None


def _keys_db(db: Path | None) -> Path:
    """--db, else the store the project's service uses (`serving.keys_db_path` under BentoML's home)."""
    from routerops.packaging import bentoml_home
    from routerops.serving import keys_db_path

    if db is not None:
        return db
    env = dict(os.environ)
    env.setdefault("BENTOML_HOME", str(bentoml_home(_project_params(), project_root())))
    return keys_db_path(env)


def _key_line(k: KeyRecord) -> str:
    budget = "unlimited" if k.budget_usd is None else f"${k.budget_usd:.6f}"
    state = "revoked" if k.revoked_at is not None else ("exhausted" if k.exhausted else "active")
    return f"{k.key_id}  {k.name:<20} {state:<9} spent ${k.spent_usd:.6f} of {budget} in {k.requests} requests"


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="who or what the key is for")],
    budget_usd: Annotated[float | None, typer.Option(help="USD the key may spend; none means unlimited")] = None,
    db: Annotated[Path | None, typer.Option(help="key store (default: the project service's)")] = None,
) -> None:
    """Create a key; it is printed once and only its hash is stored."""
    from routerops.keys import KeyStore

    try:
        created = KeyStore(_keys_db(db)).create(name, budget_usd)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    typer.echo(_key_line(created.record))
    typer.echo(f"key (shown once, store it now): {created.secret}")


@keys_app.command("list")
def keys_list(db: Annotated[Path | None, typer.Option(help="key store")] = None) -> None:
    """Every key with its state and spend (never the key itself)."""
    from routerops.keys import KeyStore

    for k in KeyStore(_keys_db(db)).list():
        typer.echo(_key_line(k))


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="the key's id (`routerops keys list`)")],
                db: Annotated[Path | None, typer.Option(help="key store")] = None) -> None:
    """Revoke a key: it is refused from its next request on."""
    from routerops.keys import KeyNotFound, KeyStore

    try:
        typer.echo(_key_line(KeyStore(_keys_db(db)).revoke(key_id)))
    except KeyNotFound as exc:
        raise _fail(str(exc.args[0] if exc.args else exc), 1) from None


@app.command("serve")
def serve(
    bento: Annotated[str | None, typer.Option(help="Bento tag (default: the one package_router built)")] = None,
    host: Annotated[str | None, typer.Option(help="default: params serve.host")] = None,
    port: Annotated[int | None, typer.Option(help="default: params serve.port")] = None,
) -> None:
    """Serve the packaged Bento (not the source tree) with `bentoml serve`, importing it from
    package_router's archives first when BentoML's store lacks it."""
    from routerops.packaging import RECORD_FILE, bentoml_home
    from routerops.service_process import ServiceError, ServiceProcess, import_package
    from routerops.serving import KEYS_DB_ENV

    params = _project_params()
    root = project_root()
    home = bentoml_home(params, root)
    package_dir = root / params.package_router.out_dir
    if bento is None:
        record_file = package_dir / RECORD_FILE
        if not record_file.is_file():
            raise _fail(f"{record_file}: no package; run `dvc repro package_router` (or `make demo`), or pass "
                        "--bento", 1)
        try:
            record, imported = import_package(package_dir, home)
        except ServiceError as exc:
            raise _fail(str(exc), 1) from None
        for tag in imported:
            typer.echo(f"imported {tag} into {home}")
        bento = record.bento_tag
    svc = ServiceProcess(bento, home, host=host or params.serve.host,
                         port=params.serve.port if port is None else port)
    env = {**os.environ, "BENTOML_HOME": str(home), KEYS_DB_ENV: str(_keys_db(None))}
    typer.echo(f"serving {bento} on {svc.base_url} (keys: {env[KEYS_DB_ENV]}); Ctrl-C stops it")
    home.mkdir(parents=True, exist_ok=True)
    os.chdir(home)  # anywhere but the checkout: the Bento carries its own code
    os.execve(svc.command()[0], svc.command(), env)


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    main()

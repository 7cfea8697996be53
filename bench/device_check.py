"""Device check: which parts of the training stack run on this machine's accelerator, in about a minute.

    python bench/device_check.py [--device cuda|cpu|auto] [--out FILE.json] [--ray-placeholder]

Six checks, each timed, each ok or failed with its error; a failure never stops the checks after it:

* environment: versions, the device's name, capability and memory, one matmul compared with the CPU;
* verl import: verl's RL math imported through `routerops.training.verl.rl_math`, as both backends do;
* generate: the local profile's tiny Qwen2 policy (its shape from params.yaml, built by `tiny_policy`)
  greedily writes one router turn for a GRPO batch of prompts through `BatchedGenerator`, the
  project's generation path; tokens/s;
* grpo step: one `LocalTrainer._grpo_step` at the params' sizes on the device: sampled rollouts
  against the replay pool (each candidate's prior from pool.yaml; no data files needed), with the
  scripted router's episodes mixed in so that advantages are not all 0, verl's GRPO advantage,
  policy and KL losses, the drill term, backward and the AdamW step; the losses must be finite
  and the weights must have moved;
* verl math: verl's advantage, policy loss and KL (values and gradients) on device tensors, compared
  with the same calls on CPU tensors;
* bf16 vs fp32: per-token log-probs of a bf16 copy of the policy against the fp32 policy.

It prints a table, and `--out` writes the rows as JSON. The exit code is 1 if any check failed and 2
for bad arguments. The test suite runs it on CPU (tests/routerops/training/test_device_check.py); on
CPU the device-vs-CPU comparisons compare the CPU with itself and only prove the code path.
docs/verl.md says how to run it on the device machine and what a full verl + vLLM run needs beyond it.
`--ray-placeholder`: verl imports ray when it is imported, and ray's wheel (79 MB) is too big to
carry to the device machine, so an empty `ray` module stands in (only when ray is missing). The RL
math never calls ray.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import importlib.machinery
import importlib.metadata
import importlib.util
import math
import os
import platform
import sys
import tempfile
import time
import traceback
import types
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere, without installing
    sys.path.insert(0, str(REPO_ROOT))

from routerops.candidates.replay import ReplayPool  # noqa: E402
from routerops.candidates.types import QuestionInfo  # noqa: E402
from routerops.config import Params, load_params  # noqa: E402
from routerops.io import write_json_atomic  # noqa: E402
from routerops.pool import Pool, load_pool  # noqa: E402
from routerops.rewards import SlidingWindowNormalizer  # noqa: E402
from routerops.rollout import STOP_STRINGS, Generation, Trajectory  # noqa: E402
from routerops.runtime import encode_prompt, router_messages  # noqa: E402
from routerops.training.local_backend import LocalTrainer, _pack, _response_logprobs  # noqa: E402
from routerops.training.tiny_policy import BatchedGenerator, build_model, train_tokenizer  # noqa: E402
from routerops.training.verl import rl_math  # noqa: E402

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from routerops.policy import CausalLM

__all__ = ["CHECKS", "Row", "main"]

PROG = "device_check.py"
DEVICES = ("cuda", "cpu", "auto")
# Width of the synthetic response batch in `verl math`: above the tiny policy's 48-token turn cap,
# so masks cut rows at every length. Its rows are one GRPO batch (questions_per_step x group_size).
MATH_WIDTH = 64
# bf16 keeps 8 mantissa bits: the tiny policy's per-token log-probs (about -7 nats, vocab ~1,000)
# differ from fp32 by under 0.01 nats (measured on CPU); 0.1 means a broken kernel or an overflow,
# not rounding.
BF16_MAX_NATS = 0.1
# A 256x256x256 fp32 matmul on the device against the CPU's. cuBLAS sums in another order (about
# 1e-6 relative); TF32, if someone turned it on, rounds inputs to 10 bits and fails this.
MATMUL_N = 256
PLACEHOLDER_FLAG = "__routerops_device_check_placeholder__"
RAY_HINT = ("verl imports ray when it is imported, and ray's wheel is too big to carry to the device machine: "
            "rerun with --ray-placeholder")


@dataclass(frozen=True)
class Row:
    check: str
    device: str
    ok: bool
    seconds: float
    detail: str
    error: str | None = None  # the traceback of a failed check
    peak_mib: float | None = None  # CUDA memory allocated at the peak of this check


@dataclass(frozen=True)
class Generated:
    prompts: list[list[int]]
    outputs: list[Generation]
    seconds: float
    batches: dict[int, int]


class _ScriptedMixTrainer(LocalTrainer):
    """The local trainer with the scripted router's episodes added to each step's rollouts.

    An untrained policy's sampled episodes are all format-invalid, so they all earn -1: every GRPO
    advantage is then 0 and the policy loss has no gradient. The scripted router's valid episodes
    on the same questions earn other rewards, so the step's PPO term moves weights too. The step
    recomputes old log-probs from the model, so the extra episodes change the data, not the math.
    """

    def __init__(self, *args: Any, scripted: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scripted = scripted
        self.last: tuple[list[Trajectory], list[Trajectory]] = ([], [])

    def _rollouts(self, step: int, model: CausalLM, tokenizer: PreTrainedTokenizerFast) -> list[Trajectory]:
        sampled = super()._rollouts(step, model, tokenizer)
        scripted = self.synthetic_trajectories(tokenizer, self.scripted)
        self.last = (sampled, scripted)
        return [*sampled, *scripted]


class Context:
    """What the checks share, built on first use: a check whose inputs fail to build fails itself."""

    def __init__(self, device: torch.device, scratch: Path, ray_note: str) -> None:
        self.device = device
        self.scratch = scratch
        self.ray_note = ray_note

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    @cached_property
    def params(self) -> Params:
        """params.yaml, held to the local profile and backend: the tiny policy's shape and GRPO sizes."""
        params = load_params(REPO_ROOT / "params.yaml")
        tp = params.train_router.model_copy(update={"backend": "local"})
        return params.model_copy(update={"profile": "local", "train_router": tp})

    @cached_property
    def pool(self) -> Pool:
        return load_pool(REPO_ROOT / "pool.yaml")

    @cached_property
    def batch(self) -> int:
        """Episodes in one GRPO step at the params' sizes (8 x 4 = 32 in params.yaml)."""
        lp = self.params.train_router.local
        return lp.questions_per_step * lp.group_size

    @cached_property
    def questions(self) -> list[QuestionInfo]:
        # Synthetic NQ-sourced questions: the replay pool answers them from each candidate's prior.
        return [QuestionInfo(f"q{i}", f"who wrote the novel number {i} about rivers?", "nq", (f"Author {i}",))
                for i in range(self.batch)]

    @cached_property
    def policy(self) -> tuple[CausalLM, PreTrainedTokenizerFast]:
        """The project's tokenizer (trained on these prompts) and tiny Qwen2, moved to the device."""
        lp = self.params.train_router.local
        texts = [m["content"] for q in self.questions for m in router_messages(q.text, self.pool, self.params)]
        tokenizer = train_tokenizer([*texts, *(a for q in self.questions for a in q.golden_answers)], lp.vocab_size)
        model = build_model(lp, len(tokenizer), tokenizer.eos_token_id, self.params.train_router.seed)
        # transformers wraps `to` in a decorator whose type loses the signature.
        return model.to(self.device), tokenizer  # type: ignore[arg-type]

    @cached_property
    def generated(self) -> Generated:
        """One greedy router turn for each question's prompt, in one batched `generate` call."""
        model, tokenizer = self.policy
        lp = self.params.train_router.local
        prompts = [encode_prompt(q.text, self.pool, tokenizer, self.params) for q in self.questions]

        async def turn(gen: BatchedGenerator, batch: Sequence[list[int]], max_new: int) -> list[Generation]:
            return list(await asyncio.gather(*(gen.generate(p, max_new_tokens=max_new, stop=STOP_STRINGS)
                                               for p in batch)))

        # Warm-up, untimed: CUDA context, kernel loading and cuBLAS handles cost seconds on first use.
        asyncio.run(turn(BatchedGenerator(model, tokenizer, greedy=True), prompts[:1], 2))
        self.sync()
        gen = BatchedGenerator(model, tokenizer, greedy=True, max_batch=len(prompts))
        t0 = time.perf_counter()
        outputs = asyncio.run(turn(gen, prompts, lp.max_tokens_per_turn))
        self.sync()
        return Generated(prompts, outputs, time.perf_counter() - t0, dict(gen.batches))


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _finite(x: float) -> bool:
    return math.isfinite(x)


def install_ray_placeholder() -> str:
    """An empty `ray` module in sys.modules when ray is not installed; what was done, in words.

    verl's package import runs `verl.protocol`, which imports ray and names `ray.ObjectRef` in a
    dataclass annotation; nothing on the path of the RL math calls ray. Every other attribute is
    missing (AttributeError, so `hasattr` probes say no), and a call into ray fails loudly.
    """
    try:
        present = importlib.util.find_spec("ray") is not None  # None also where sys.modules holds None
    except ValueError:  # imported, without a spec
        present = True
    if present:
        return "installed; placeholder not needed"
    mod = types.ModuleType("ray", "Placeholder for ray (bench/device_check.py --ray-placeholder).")
    mod.__spec__ = importlib.machinery.ModuleSpec("ray", None)

    class ObjectRef:
        """Stands in for ray.ObjectRef in annotations only."""

    def missing(name: str) -> Any:
        raise AttributeError(f"module 'ray' is bench/device_check.py's placeholder and has no {name!r}")

    setattr(mod, "ObjectRef", ObjectRef)  # noqa: B010
    setattr(mod, "__getattr__", missing)  # noqa: B010
    setattr(mod, PLACEHOLDER_FLAG, True)
    sys.modules["ray"] = mod
    return "absent; placeholder module used"


# ----- checks: each returns its detail or raises ---------------------------------------------------


def check_environment(ctx: Context) -> str:
    parts = [f"python {platform.python_version()}", f"torch {torch.__version__}",
             f"transformers {_version('transformers')}", f"tokenizers {_version('tokenizers')}",
             f"verl {_version('verl')}", f"ray {_version('ray')}"]
    if ctx.cuda:
        index = ctx.device.index if ctx.device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
        parts += [f"{props.name}", f"sm_{props.major}{props.minor}", f"{props.multi_processor_count} SMs",
                  f"{total / 2**30:.1f} GiB ({free / 2**30:.1f} free)", f"CUDA {torch.version.cuda}",
                  f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}", f"{torch.cuda.device_count()} GPU(s)"]
    else:
        parts += [f"{platform.machine()}", f"{os.cpu_count()} CPUs", f"{torch.get_num_threads()} torch threads"]
    a = torch.randn(MATMUL_N, MATMUL_N, generator=torch.Generator().manual_seed(0))
    on_device = (a.to(ctx.device) @ a.to(ctx.device)).cpu()
    torch.testing.assert_close(on_device, a @ a, rtol=1e-4, atol=1e-4)
    return ", ".join(parts)


def check_verl_import(ctx: Context) -> str:
    t = torch.zeros(1, 1)
    rl_math.kl_loss(t, t, torch.ones(1, 1))  # the first call imports verl.trainer.ppo.core_algos
    placeholder = getattr(sys.modules.get("ray"), PLACEHOLDER_FLAG, False)
    return (f"verl {_version('verl')} core_algos through rl_math; ray "
            f"{'placeholder' if placeholder else _version('ray')} ({ctx.ray_note})")


def check_generate(ctx: Context) -> str:
    model, _ = ctx.policy
    g = ctx.generated
    tokens = sum(len(o.token_ids) for o in g.outputs)
    if g.batches != {len(g.prompts): 1}:
        raise AssertionError(f"expected one batch of {len(g.prompts)}, got {g.batches}")
    for i, o in enumerate(g.outputs):
        if not o.token_ids or o.logprobs is None or len(o.logprobs) != len(o.token_ids):
            raise AssertionError(f"prompt {i}: {len(o.token_ids)} tokens, log-probs {o.logprobs!r:.60}")
        if not all(_finite(lp) and lp <= 1e-5 for lp in o.logprobs):
            raise AssertionError(f"prompt {i}: a log-prob is not finite or above 0: {o.logprobs}")
    n_params = sum(p.numel() for p in model.parameters())
    finish = ", ".join(f"{k} {v}" for k, v in sorted(Counter(o.finish_reason for o in g.outputs).items()))
    return (f"{n_params / 1e6:.2f} M params; {len(g.prompts)} prompts of ~{len(g.prompts[0])} tokens, one batch, "
            f"<= {ctx.params.train_router.local.max_tokens_per_turn} new: {tokens} tokens in {g.seconds:.2f} s, "
            f"{tokens / g.seconds:.0f} tok/s; finish: {finish}")


def check_grpo_step(ctx: Context) -> str:
    model, tokenizer = ctx.policy
    params, lp = ctx.params, ctx.params.train_router.local
    trainer = _ScriptedMixTrainer(params, ctx.pool, ctx.questions[: lp.questions_per_step], ReplayPool(None),
                                  ctx.scratch / "ckpt", scripted=lp.questions_per_step)
    ref = copy.deepcopy(model).eval()
    # As LocalTrainer.run builds its optimiser.
    opt = torch.optim.AdamW(model.parameters(), lr=lp.grpo_lr, weight_decay=0.0)
    before = [p.detach().clone() for p in model.parameters()]
    torch.manual_seed(params.train_router.seed)
    metrics, _ = trainer._grpo_step(0, model, ref, tokenizer, opt, SlidingWindowNormalizer(params.rewards.window))
    ctx.sync()
    keys = ("reward", "pg_loss", "kl", "entropy", "drill_loss", "ppo_kl")
    bad = {k: metrics[k] for k in keys if not _finite(float(metrics[k]))}
    if bad:
        raise AssertionError(f"non-finite step metrics: {bad}")
    moved = max(float((p.detach() - b).abs().max()) for p, b in zip(model.parameters(), before, strict=True))
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise AssertionError("a weight is not finite after the step")
    if moved == 0.0:
        raise AssertionError("no weight changed in the step")
    sampled, scripted = trainer.last
    return (f"{len(sampled)} sampled + {len(scripted)} scripted episodes; reward {metrics['reward']:.3f}, "
            f"pg_loss {metrics['pg_loss']:.4f}, kl {metrics['kl']:.2e}, drill {metrics['drill_loss']:.3f}, "
            f"entropy {metrics['entropy']:.3f}; max |dw| {moved:.1e}")


def _math_inputs(ctx: Context) -> dict[str, Any]:
    """One GRPO batch of synthetic responses (CPU): groups of `group_size`, one group whose rewards
    are all equal (std 0) and one singleton group (verl's mean 0, std 1 path)."""
    lp = ctx.params.train_router.local
    rows, width, group = ctx.batch, MATH_WIDTH, lp.group_size
    g = torch.Generator().manual_seed(ctx.params.train_router.seed)
    lengths = torch.randint(1, width + 1, (rows,), generator=g)
    mask = (torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)).float()
    scores = torch.randn(rows, generator=g)
    scores[:group] = 1.0
    rewards = torch.zeros(rows, width)
    rewards[torch.arange(rows), lengths - 1] = scores
    index = np.array([f"g{i // group}" for i in range(rows)], dtype=object)
    index[-1] = "alone"
    old = -3.0 * torch.rand(rows, width, generator=g)
    # Ratios of exp(+-0.3) put some tokens outside the clip range, so both branches run.
    new = old + 0.3 * torch.randn(rows, width, generator=g)
    ref = old + 0.1 * torch.randn(rows, width, generator=g)
    return {"rewards": rewards, "mask": mask, "index": index, "old": old, "new": new, "ref": ref}


def _math_on(device: torch.device, x: dict[str, Any], clip_ratio: float) -> dict[str, Any]:
    def to(name: str) -> torch.Tensor:
        t: torch.Tensor = x[name]
        return t.to(device)

    mask = to("mask")
    advantages = rl_math.grpo_advantages(to("rewards"), mask, x["index"], norm_by_std=True)
    new = to("new").requires_grad_()
    pg, pg_metrics = rl_math.policy_loss(to("old"), new, advantages, mask, clip_ratio)
    kl = rl_math.kl_loss(new, to("ref"), mask)
    (pg + kl).backward()
    assert new.grad is not None
    return {"advantages": advantages.detach(), "pg_loss": pg.detach(), "kl": kl.detach(), "grad": new.grad,
            "clipfrac": float(pg_metrics["actor/pg_clipfrac"])}


def check_verl_math(ctx: Context) -> str:
    x = _math_inputs(ctx)
    clip = ctx.params.train_router.local.clip_ratio
    on_cpu = _math_on(torch.device("cpu"), x, clip)
    on_dev = _math_on(ctx.device, x, clip)
    ctx.sync()
    diffs = []
    for k in ("advantages", "pg_loss", "kl", "grad"):
        got, want = on_dev[k].cpu(), on_cpu[k]

        def named(message: str, k: str = k) -> str:
            return f"{k}: {message}"

        torch.testing.assert_close(got, want, msg=named)  # float32 tolerances: rtol 1.3e-6, atol 1e-5
        diffs.append(f"{k} {float((got - want).abs().max()):.1e}")
    if not 0.0 < on_cpu["clipfrac"] < 1.0:
        raise AssertionError(f"clip fraction {on_cpu['clipfrac']}: the inputs miss one of the clip branches")
    return (f"{ctx.batch}x{MATH_WIDTH} on {ctx.device} vs cpu, max |diff|: {', '.join(diffs)}; "
            f"clipfrac {on_cpu['clipfrac']:.2f}, pg_loss {float(on_cpu['pg_loss']):.4f}")


def check_bf16(ctx: Context) -> str:
    model, tokenizer = ctx.policy
    g = ctx.generated
    responses = [o.token_ids for o in g.outputs]
    ids, attn, _ = _pack(g.prompts, responses, [[1] * len(r) for r in responses], tokenizer.pad_token_id)
    starts = torch.tensor([len(p) for p in g.prompts], dtype=torch.long)
    width = max(len(r) for r in responses)
    mask = torch.arange(width).unsqueeze(0) < torch.tensor([len(r) for r in responses]).unsqueeze(1)
    half = copy.deepcopy(model).to(torch.bfloat16)  # type: ignore[arg-type]  # as in Context.policy
    with torch.no_grad():
        fp32, _ = _response_logprobs(model, ids, attn, starts, width)
        bf16, _ = _response_logprobs(half, ids, attn, starts, width)
    diff = (fp32 - bf16).abs()[mask]
    worst, mean = float(diff.max()), float(diff.mean())
    if not (_finite(worst) and worst <= BF16_MAX_NATS):
        raise AssertionError(f"bf16 log-probs differ from fp32 by up to {worst:.3g} nats (limit {BF16_MAX_NATS})")
    return (f"{int(mask.sum())} response tokens: |logp fp32 - bf16| max {worst:.4f}, mean {mean:.4f} nats "
            f"(limit {BF16_MAX_NATS})")


Check = Callable[[Context], str]
# (name, check, whether it runs under a default-device context): the local trainer's code builds its
# tensors without naming a device, so on CUDA it runs with the device as torch's default.
CHECKS: tuple[tuple[str, Check, bool], ...] = (
    ("environment", check_environment, False),
    ("verl import", check_verl_import, False),
    ("generate", check_generate, True),
    ("grpo step", check_grpo_step, True),
    ("verl math", check_verl_math, False),
    ("bf16 vs fp32", check_bf16, True),
)


def run_check(name: str, fn: Check, default_device: bool, ctx: Context) -> Row:
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats(ctx.device)
    t0 = time.perf_counter()
    try:
        if default_device:
            with ctx.device:
                detail = fn(ctx)
        else:
            detail = fn(ctx)
        ctx.sync()
        ok, error = True, None
    except Exception as exc:  # one failed check is a row of the table, not the end of the script
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        detail = f"{type(exc).__name__}: {first}"[:300]
        if isinstance(exc, ModuleNotFoundError) and exc.name == "ray":
            detail += f" ({RAY_HINT})"
        ok, error = False, traceback.format_exc()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(ctx.device) / 2**20 if ctx.cuda else None
    return Row(name, str(ctx.device), ok, seconds, detail, error, peak)


def table(rows: Sequence[Row]) -> str:
    lines = ["| check | device | result | seconds | detail |", "|---|---|---|---|---|"]
    for r in rows:
        detail = r.detail + (f"; peak {r.peak_mib:.0f} MiB" if r.peak_mib is not None else "")
        lines.append(f"| {r.check} | {r.device} | {'ok' if r.ok else 'FAILED'} | {r.seconds:.2f} | "
                     f"{detail.replace('|', '/')} |")
    return "\n".join(lines)


def resolve_device(ap: argparse.ArgumentParser, asked: str) -> torch.device:
    if asked not in DEVICES:
        ap.error(f"--device must be cuda, cpu or auto, not {asked!r}")
    if asked == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False)")
    if asked == "auto":
        asked = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device("cuda", torch.cuda.current_device()) if asked == "cuda" else torch.device("cpu")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--device", default="auto", help="cuda, cpu or auto (cuda when torch sees one; default)")
    ap.add_argument("--out", type=Path, default=None, metavar="FILE.json", help="also write the rows as JSON")
    ap.add_argument("--ray-placeholder", action="store_true",
                    help="if ray is not installed, put an empty ray module in its place so verl imports")
    a = ap.parse_args(argv)
    device = resolve_device(ap, a.device)
    ray_note = install_ray_placeholder() if a.ray_placeholder else "no placeholder asked for"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="routerops-device-check-") as scratch:
        ctx = Context(device, Path(scratch), ray_note)
        rows = [run_check(name, fn, default_device, ctx) for name, fn, default_device in CHECKS]
    total = time.perf_counter() - t0
    ok = all(r.ok for r in rows)
    print(f"\ndevice check on {device}: {sum(r.ok for r in rows)}/{len(rows)} ok in {total:.1f} s\n")
    print(table(rows))
    for r in rows:
        if r.error:
            print(f"\n--- {r.check} failed:\n{r.error}", file=sys.stderr)
    if a.out is not None:
        write_json_atomic(a.out, {"device": str(device), "ok": ok, "seconds": total,
                                  "checks": [asdict(r) for r in rows]})
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Typed, frozen views of params.yaml. One model per section; unknown keys are errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from routerops.rollout import RolloutLimits

__all__ = ["CandidatesParams", "DemoParams", "Params", "ParamsError", "PromptParams", "RewardsParams",
           "RolloutParams", "load_params"]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PromptParams(_Section):
    show_prices: bool = False
    # A template path (or null for the built-in one), or a mapping profile -> path/null.
    template: str | dict[str, str | None] | None = None

    def template_for(self, profile: str) -> str | None:
        if isinstance(self.template, dict):
            return self.template.get(profile)
        return self.template


class RolloutParams(_Section):
    max_turns: int = Field(4, ge=0, le=16)
    max_tokens_per_turn: int = Field(1024, ge=1)
    max_obs_tokens: int = Field(600, ge=1)
    max_prompt_tokens: int = Field(2048, ge=1)
    max_context_tokens: int = Field(4096, ge=2)
    concurrency: int = Field(16, ge=1, le=4096)

    @model_validator(mode="after")
    def _prompt_fits(self) -> RolloutParams:
        if self.max_prompt_tokens >= self.max_context_tokens:
            raise ValueError("max_prompt_tokens must be below max_context_tokens")
        return self

    def limits(self) -> RolloutLimits:
        return RolloutLimits(self.max_turns, self.max_tokens_per_turn, self.max_obs_tokens,
                             self.max_prompt_tokens, self.max_context_tokens)


class RewardsParams(_Section):
    alpha: float = Field(0.0, ge=0.0, le=1.0)
    outcome: Literal["em", "f1"] = "em"
    include_prompt_cost: bool = False
    normalizer: Literal["sliding", "frozen"] = "sliding"
    window: int = Field(1000, ge=1)


class CandidatesParams(_Section):
    backend: Literal["replay", "openai"] = "replay"
    concurrency: int = Field(32, ge=1, le=1024)
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(60.0, gt=0)
    max_attempts: int = Field(5, ge=1, le=50)
    backoff_base_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(20.0, ge=0)
    max_retry_after_s: float = Field(30.0, ge=0)
    request_budget_usd: float | None = Field(None, ge=0)
    run_budget_usd: float | None = Field(None, ge=0)
    cache_path: str | None = ".routerops/cache/responses.sqlite"
    replay_seed: int = 0
    replay_decline_share: float = Field(0.25, ge=0, le=1)
    replay_calibrate: bool = True


class DemoParams(_Section):
    questions: int = Field(5, ge=1, le=100)
    route_to: tuple[str, ...] = Field(min_length=1)
    seed: int = 0


class DatasetInput(_Section):
    path: str = Field(min_length=1)
    format: Literal["flashrag", "nq_open", "hotpot_simplified", "r1searcher", "verl_parquet", "llmrouter_queries"]
    split: Literal["train", "validation", "test"]
    source: str | None = None

    @model_validator(mode="after")
    def _source_given(self) -> DatasetInput:
        if self.format not in ("verl_parquet", "llmrouter_queries") and not self.source:
            raise ValueError(f"{self.path}: format {self.format} needs a 'source'")
        return self


SplitSizes = dict[str, dict[str, int]]


class BuildDatasetParams(_Section):
    raw_dir: str = "data"
    seed: int = 0
    inputs: dict[str, tuple[DatasetInput, ...]]
    sizes: dict[str, SplitSizes]
    ability: str = "cost-aware-routing"
    agent_name: str = "router_agent"
    out_dir: str = "artifacts/dataset"
    data_card: str = "metrics/data_card.json"

    @model_validator(mode="after")
    def _sizes_ok(self) -> BuildDatasetParams:
        for profile, splits in self.sizes.items():
            for split, counts in splits.items():
                if split not in ("train", "validation", "test"):
                    raise ValueError(f"sizes.{profile}: unknown split {split!r}")
                for source, n in counts.items():
                    if n < 0:
                        raise ValueError(f"sizes.{profile}.{split}.{source} must be >= 0, got {n}")
        return self

    def inputs_for(self, profile: str) -> tuple[DatasetInput, ...]:
        if not self.inputs.get(profile):
            raise ValueError(f"build_dataset.inputs has no profile {profile!r} (have: {', '.join(self.inputs)})")
        return self.inputs[profile]

    def sizes_for(self, profile: str) -> SplitSizes:
        if profile not in self.sizes:
            raise ValueError(f"build_dataset.sizes has no profile {profile!r} (have: {', '.join(self.sizes)})")
        return self.sizes[profile]


class ValidateDatasetParams(_Section):
    tokenizer: str = "bytes"
    out_dir: str = "artifacts/validation"
    metrics: str = "metrics/validation.json"


class LocalTrainParams(_Section):
    vocab_size: int = Field(1024, ge=300, le=65536)
    hidden_size: int = Field(128, ge=8)
    intermediate_size: int = Field(256, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int = Field(2, ge=1)
    copy_drills: int = Field(40000, ge=0)
    drill_batch_size: int = Field(64, ge=1)
    drill_lr: float = Field(3e-3, gt=0)
    drill_real_share: float = Field(0.25, ge=0, le=1)
    context_drills: int = Field(2400, ge=0)
    context_drill_tokens: int = Field(320, ge=32)
    warmup_steps: int = Field(30, ge=0)
    sft_examples: int = Field(1200, ge=1)
    sft_epochs: int = Field(3, ge=0)
    sft_batch_size: int = Field(16, ge=1)
    sft_lr: float = Field(3e-3, gt=0)
    grpo_steps: int = Field(60, ge=0)
    questions_per_step: int = Field(8, ge=1)
    group_size: int = Field(4, ge=2)
    grpo_lr: float = Field(3e-4, gt=0)
    kl_coef: float = Field(1e-3, ge=0)
    clip_ratio: float = Field(0.2, gt=0, lt=1)
    grpo_drills_per_step: int = Field(8, ge=0)
    grpo_drill_coef: float = Field(1.0, ge=0)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens_per_turn: int = Field(48, ge=4)
    checkpoint_every: int = Field(5, ge=1)
    sub_question: Literal["delegate", "question"] = "delegate"

    @model_validator(mode="after")
    def _heads(self) -> LocalTrainParams:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("hidden_size must divide by num_heads, and num_heads by num_kv_heads")
        return self


class VerlTrainParams(_Section):
    model_path: str = "Qwen/Qwen2.5-3B-Instruct"
    algorithm: Literal["grpo", "ppo"] = "grpo"
    group_size: int = Field(5, ge=1)
    train_batch_size: int = Field(64, ge=1)
    ppo_mini_batch_size: int = Field(32, ge=1)
    ppo_micro_batch_size_per_gpu: int = Field(4, ge=1)
    actor_lr: float = Field(1e-6, gt=0)
    critic_lr: float = Field(1e-5, gt=0)
    kl_coef: float = Field(1e-3, ge=0)
    total_training_steps: int = Field(225, ge=1)
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(1.0, ge=0, le=1)
    rollout_name: Literal["vllm", "sglang"] = "vllm"
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)
    tensor_model_parallel_size: int = Field(1, ge=1)
    max_response_length: int = Field(4096, ge=1)
    nnodes: int = Field(1, ge=1)
    n_gpus_per_node: int = Field(4, ge=1)
    ray_address: str | None = None
    save_freq: int = 25
    test_freq: int = 25
    logger: tuple[str, ...] = ("console",)
    project_name: str = "routerops"
    experiment_name: str = "router-r1-grpo"

    @model_validator(mode="after")
    def _batches(self) -> VerlTrainParams:
        if self.ppo_mini_batch_size > self.train_batch_size:
            raise ValueError("ppo_mini_batch_size must not exceed train_batch_size")
        return self


class TrainRouterParams(_Section):
    backend: Literal["local", "verl"] = "local"
    seed: int = 0
    out_dir: str = "artifacts/router"
    checkpoint_dir: str = "checkpoints/train_router"
    metrics: str = "metrics/train.json"
    history: str = "plots/train_history.csv"
    local: LocalTrainParams = LocalTrainParams()
    verl: VerlTrainParams = VerlTrainParams()


class EvaluateRouterParams(_Section):
    decoding: Literal["greedy", "sampled"] = "greedy"
    seed: int = 0
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    concurrency: int = Field(64, ge=1)
    knn_k: int = Field(10, ge=1)
    knn_train_questions: int = Field(600, ge=1)
    knn_cost_weight: float = Field(0.5, ge=0)
    bootstrap_samples: int = Field(2000, ge=100)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    # transformers (the router directory in this process) or completions (an OpenAI-compatible
    # /v1/completions server such as vLLM serving it), per profile.
    policy: dict[str, Literal["transformers", "completions"]] = {"local": "transformers", "gpu": "completions"}
    policy_base_url_env: str = Field("ROUTEROPS_ROUTER_BASE_URL", pattern=r"^[A-Z_][A-Z0-9_]*$")
    policy_api_key_env: str = Field("ROUTEROPS_ROUTER_API_KEY", pattern=r"^[A-Z_][A-Z0-9_]*$")
    policy_model: str | None = None
    out_dir: str = "artifacts/evaluation"
    metrics: str = "metrics/evaluation.json"


class Params(_Section):
    profile: Literal["local", "gpu"] = "local"
    prompt: PromptParams = PromptParams()
    rollout: RolloutParams = RolloutParams()
    rewards: RewardsParams = RewardsParams()
    candidates: CandidatesParams = CandidatesParams()
    demo: DemoParams = DemoParams(route_to=("LLaMA-3.1-8B-Instruct",))
    build_dataset: BuildDatasetParams | None = None
    validate_dataset: ValidateDatasetParams | None = None
    train_router: TrainRouterParams | None = None
    evaluate_router: EvaluateRouterParams | None = None

    def require(self, section: str) -> Any:
        value = getattr(self, section)
        if value is None:
            raise ParamsError(f"params.yaml has no '{section}' section")
        return value


class ParamsError(ValueError):
    pass


def parse_params(raw: Any, where: str = "<params>") -> Params:
    try:
        return Params.model_validate(raw or {})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ParamsError(f"{where}: {loc}: {err['msg']}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{p}: file not found") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{p}: invalid YAML: {exc}") from None
    return parse_params(raw, str(p))

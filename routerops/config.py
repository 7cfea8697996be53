"""Typed, frozen views of params.yaml. One model per section; unknown or missing keys are errors.

params.yaml is the one source of every value and of its description (the comment above each
key): no field here has a default, so a value cannot silently differ between code and file.
Constraints (ranges, choices) live here, where they are enforced.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from routerops.datasets import Format, Split
from routerops.protocol import FormatRules
from routerops.rollout import RolloutLimits

__all__ = [
    "PROFILES",
    "BuildDatasetParams",
    "CandidatesParams",
    "DatasetInput",
    "DemoParams",
    "EvaluateRouterParams",
    "LocalTrainParams",
    "PackageRouterParams",
    "Params",
    "ParamsError",
    "Profile",
    "PromptParams",
    "RewardsParams",
    "RolloutParams",
    "ServeParams",
    "TrainRouterParams",
    "ValidateDatasetParams",
    "VerlTrainParams",
    "load_params",
    "parse_params",
]

Profile = Literal["local", "gpu"]
PROFILES: tuple[Profile, ...] = ("local", "gpu")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _every_profile(name: str, mapping: dict[Profile, Any]) -> None:
    missing = [p for p in PROFILES if p not in mapping]
    if missing:
        raise ValueError(f"{name} needs an entry for every profile; missing: {', '.join(missing)}")


class PromptParams(_Section):
    show_prices: bool
    template: dict[Profile, str | None]

    @model_validator(mode="after")
    def _profiles(self) -> PromptParams:
        _every_profile("template", self.template)
        return self

    def template_for(self, profile: Profile) -> str | None:
        return self.template[profile]


class FormatParams(_Section):
    """`rollout.format`: Router-R1's format rules unless a named deviation is set (see
    `routerops.protocol.FormatRules`)."""

    placeholders: tuple[str, ...] = Field(min_length=0)
    forbid_stray_text: bool
    empty_answer_invalid: bool
    forbid_repeat_search: bool

    def rules(self) -> FormatRules:
        return FormatRules(self.placeholders, self.forbid_stray_text, self.empty_answer_invalid,
                           self.forbid_repeat_search)


class RolloutParams(_Section):
    max_turns: int = Field(ge=0, le=16)
    max_tokens_per_turn: int = Field(ge=1)
    max_obs_tokens: int = Field(ge=1)
    max_prompt_tokens: int = Field(ge=1)
    max_context_tokens: int = Field(ge=2)
    concurrency: int = Field(ge=1, le=4096)
    format: FormatParams

    @model_validator(mode="after")
    def _prompt_fits(self) -> RolloutParams:
        if self.max_prompt_tokens >= self.max_context_tokens:
            raise ValueError("max_prompt_tokens must be below max_context_tokens")
        return self

    def limits(self) -> RolloutLimits:
        """The protocol's limits; the one place a `RolloutLimits` is built from params."""
        return RolloutLimits(self.max_turns, self.max_tokens_per_turn, self.max_obs_tokens,
                             self.max_prompt_tokens, self.max_context_tokens, self.format.rules())


class RewardsParams(_Section):
    alpha: float = Field(ge=0.0, le=1.0)
    outcome: Literal["em", "f1"]
    include_prompt_cost: bool
    normalizer: Literal["sliding", "calibrated"]
    window: int = Field(ge=1)


class CandidatesParams(_Section):
    backend: Literal["replay", "openai"]
    concurrency: int = Field(ge=1, le=1024)
    connect_timeout_s: float = Field(gt=0)
    read_timeout_s: float = Field(gt=0)
    max_attempts: int = Field(ge=1, le=50)
    backoff_base_s: float = Field(ge=0)
    backoff_max_s: float = Field(ge=0)
    max_retry_after_s: float = Field(ge=0)
    request_budget_usd: float | None = Field(ge=0)
    run_budget_usd: float | None = Field(ge=0)
    cache_path: str | None
    replay_seed: int
    replay_decline_share: float = Field(ge=0, le=1)
    replay_calibrate: bool
    replay_correlated: bool


class DemoParams(_Section):
    questions: int = Field(ge=1, le=100)
    route_to: tuple[str, ...] = Field(min_length=1)
    seed: int
    service_questions: int = Field(ge=1, le=20)


class PackageRouterParams(_Section):
    model_name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    bento_name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    bentoml_home: str
    out_dir: str


class RetrainParams(_Section):
    min_cheapest_correct_changed: float = Field(ge=0.0, le=1.0)
    max_objective_drop: float = Field(ge=0.0)
    max_relative_price_shift: float = Field(ge=0.0)
    price_source: str = Field(min_length=1)
    price_format: Literal["litellm", "openrouter", "pool"]
    min_objective_gain: float
    budget_usd: float | None = Field(ge=0)
    workspaces: str = Field(min_length=1)


class StackParams(_Section):
    prefect_port: int = Field(ge=1, le=65535)


class ServeParams(_Section):
    host: str
    port: int = Field(ge=0, le=65535)
    max_concurrency: int = Field(ge=1, le=4096)
    retry_after_s: int = Field(ge=0)
    timeout_s: float = Field(gt=0)
    auth: Literal["required", "off"]


class DatasetInput(_Section):
    path: str = Field(min_length=1)
    format: Format
    split: Split
    source: str | None = Field(None, description="only for formats whose rows do not carry their own source")

    @model_validator(mode="after")
    def _source_given(self) -> DatasetInput:
        if self.format not in ("verl_parquet", "llmrouter_queries") and not self.source:
            raise ValueError(f"{self.path}: format {self.format} needs a 'source'")
        return self


SplitSizes = dict[Split, dict[str, int]]


class BuildDatasetParams(_Section):
    raw_dir: str
    seed: int
    inputs: dict[Profile, tuple[DatasetInput, ...]]
    sizes: dict[Profile, SplitSizes]
    ability: str
    agent_name: str = Field(min_length=1)
    out_dir: str
    data_card: str

    @model_validator(mode="after")
    def _sizes_ok(self) -> BuildDatasetParams:
        _every_profile("inputs", self.inputs)
        _every_profile("sizes", self.sizes)
        for profile, splits in self.sizes.items():
            for split, counts in splits.items():
                for source, n in counts.items():
                    if n < 0:
                        raise ValueError(f"sizes.{profile}.{split}.{source} must be >= 0, got {n}")
        return self

    def inputs_for(self, profile: Profile) -> tuple[DatasetInput, ...]:
        return self.inputs[profile]

    def sizes_for(self, profile: Profile) -> SplitSizes:
        return self.sizes[profile]


class ValidateDatasetParams(_Section):
    tokenizer: str
    out_dir: str
    docs_dir: str
    metrics: str


class LocalTrainParams(_Section):
    vocab_size: int = Field(ge=300, le=65536)
    hidden_size: int = Field(ge=8)
    intermediate_size: int = Field(ge=8)
    num_layers: int = Field(ge=1)
    num_heads: int = Field(ge=1)
    num_kv_heads: int = Field(ge=1)
    copy_drills: int = Field(ge=0)
    drill_batch_size: int = Field(ge=1)
    drill_lr: float = Field(gt=0)
    drill_real_share: float = Field(ge=0, le=1)
    drill_repeat_share: float = Field(ge=0, le=1)
    context_drills: int = Field(ge=0)
    context_drill_tokens: int = Field(ge=32)
    warmup_steps: int = Field(ge=0)
    sft_examples: int = Field(ge=1)
    sft_epochs: int = Field(ge=0)
    sft_batch_size: int = Field(ge=1)
    sft_lr: float = Field(gt=0)
    grpo_steps: int = Field(ge=0)
    questions_per_step: int = Field(ge=1)
    group_size: int = Field(ge=2)
    grpo_lr: float = Field(gt=0)
    kl_coef: float = Field(ge=0)
    norm_adv_by_std: bool
    clip_ratio: float = Field(gt=0, lt=1)
    grpo_drills_per_step: int = Field(ge=0)
    grpo_drill_coef: float = Field(ge=0)
    grpo_retry_drills_per_step: int = Field(ge=0)
    temperature: float = Field(gt=0)
    top_p: float = Field(gt=0, le=1)
    max_tokens_per_turn: int = Field(ge=4)
    checkpoint_every: int = Field(ge=1)
    sub_question: Literal["delegate", "question"]
    fallback: Literal["random", "next_listed"]
    decline_drill_share: float = Field(ge=0, le=1)
    retry_drills: int = Field(ge=0)

    @model_validator(mode="after")
    def _heads(self) -> LocalTrainParams:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("hidden_size must divide by num_heads, and num_heads by num_kv_heads")
        return self


class VerlTrainParams(_Section):
    model_path: str = Field(min_length=1)
    algorithm: Literal["grpo", "ppo"]
    group_size: int = Field(ge=1)
    train_batch_size: int = Field(ge=1)
    ppo_mini_batch_size: int = Field(ge=1)
    ppo_micro_batch_size_per_gpu: int = Field(ge=1)
    actor_lr: float = Field(gt=0)
    critic_lr: float = Field(gt=0)
    kl_coef: float = Field(ge=0)
    norm_adv_by_std: bool
    total_training_steps: int = Field(ge=1)
    gamma: float = Field(ge=0, le=1)
    lam: float = Field(ge=0, le=1)
    rollout_name: Literal["vllm", "sglang"]
    temperature: float = Field(gt=0)
    top_p: float = Field(gt=0, le=1)
    gpu_memory_utilization: float = Field(gt=0, le=1)
    tensor_model_parallel_size: int = Field(ge=1)
    max_response_length: int = Field(ge=1)
    nnodes: int = Field(ge=1)
    n_gpus_per_node: int = Field(ge=1)
    ray_address: str | None
    save_freq: int
    test_freq: int
    logger: tuple[str, ...]
    project_name: str
    experiment_name: str

    @model_validator(mode="after")
    def _batches(self) -> VerlTrainParams:
        if self.ppo_mini_batch_size > self.train_batch_size:
            raise ValueError("ppo_mini_batch_size must not exceed train_batch_size")
        return self


class TrainRouterParams(_Section):
    backend: Literal["local", "verl"]
    seed: int
    out_dir: str
    checkpoint_dir: str
    metrics: str
    history: str
    local: LocalTrainParams
    verl: VerlTrainParams


class EvaluateRouterParams(_Section):
    decoding: Literal["greedy", "sampled"]
    seed: int
    temperature: float = Field(gt=0)
    top_p: float = Field(gt=0, le=1)
    concurrency: int = Field(ge=1)
    knn_k: int = Field(ge=1)
    knn_train_questions: int = Field(ge=1)
    knn_cost_weight: float = Field(ge=0)
    matrix_slice: bool
    bootstrap_samples: int = Field(ge=100)
    confidence: float = Field(gt=0.5, lt=1)
    policy: dict[Profile, Literal["transformers", "completions"]]
    policy_base_url_env: str = Field(pattern=r"^[A-Z_][A-Z0-9_]*$")
    policy_api_key_env: str = Field(pattern=r"^[A-Z_][A-Z0-9_]*$")
    policy_model: str | None
    out_dir: str
    metrics: str

    @model_validator(mode="after")
    def _profiles(self) -> EvaluateRouterParams:
        _every_profile("policy", self.policy)
        return self


class Params(_Section):
    profile: Profile
    prompt: PromptParams
    rollout: RolloutParams
    rewards: RewardsParams
    candidates: CandidatesParams
    demo: DemoParams
    build_dataset: BuildDatasetParams
    validate_dataset: ValidateDatasetParams
    train_router: TrainRouterParams
    evaluate_router: EvaluateRouterParams
    package_router: PackageRouterParams
    serve: ServeParams
    retrain: RetrainParams
    stack: StackParams

    def router_limits(self) -> RolloutLimits:
        """Limits of the episodes the trained router runs (training, evaluation, serving):
        the protocol's, with the tiny local policy's own per-turn cap when it is the one trained
        (its turns are a few dozen tokens; Router-R1's 1,024 would only let it ramble)."""
        limits = self.rollout.limits()
        if self.train_router.backend == "local":
            return dataclasses.replace(limits, max_tokens_per_turn=self.train_router.local.max_tokens_per_turn)
        return limits


class ParamsError(ValueError):
    pass


def parse_params(raw: Any, where: str = "<params>") -> Params:
    try:
        return Params.model_validate(raw or {})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ParamsError(f"{where}: {loc}: {err['msg']}") from None


def load_params(path: str | os.PathLike[str]) -> Params:
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{p}: file not found") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{p}: invalid YAML: {exc}") from None
    return parse_params(raw, str(p))

"""Compose and validate with verl's own config and checks, all on CPU.

`compose_config` composes verl's packaged `ppo_trainer` Hydra config with the generated
overrides, as `verl.trainer.main_ppo` would; `validate` runs verl's own validation on the result
(see its docstring for what is and is not checked). verl, Hydra and OmegaConf are imported
inside the functions.
"""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import yaml

if TYPE_CHECKING:  # only for annotations: importing omegaconf at runtime is left to the functions
    from omegaconf import DictConfig

__all__ = ["VerlConfigError", "compose_config", "stub_model_dir", "validate", "verl_config_dir"]


class VerlConfigError(ValueError):
    """verl (or Hydra) rejected the generated configuration; the message is theirs."""


def verl_config_dir() -> Path:
    """verl's packaged Hydra config directory (trainer/config of the installed wheel)."""
    import importlib.util

    spec = importlib.util.find_spec("verl")
    if spec is None or not spec.submodule_search_locations:
        raise VerlConfigError("verl is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "trainer" / "config"


_HYDRA_LOCK = threading.Lock()  # Hydra's GlobalHydra is process-global


def compose_config(overrides: Sequence[str], config_name: str = "ppo_trainer") -> DictConfig:
    """Compose verl's own `ppo_trainer` config with the overrides, as `main_ppo` would."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    with _HYDRA_LOCK:
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(verl_config_dir()), version_base=None):
                return compose(config_name=config_name, overrides=list(overrides))
        except (HydraException, OmegaConfBaseException, ValueError) as exc:
            raise VerlConfigError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            GlobalHydra.instance().clear()


def _check_agent_loop_file(cfg: DictConfig, agent_name: str | None) -> None:
    path = cfg.actor_rollout_ref.rollout.agent.agent_loop_config_path
    if not path:
        return
    p = Path(str(path))
    if not p.is_file():
        raise VerlConfigError(f"agent loop config {p} does not exist")
    entries = yaml.safe_load(p.read_text(encoding="utf-8")) or []
    names = [e.get("name") for e in entries if isinstance(e, dict)]
    wanted = agent_name or str(cfg.actor_rollout_ref.rollout.agent.default_agent_loop)
    if wanted not in names:
        raise VerlConfigError(f"agent loop config {p} registers {names}, not {wanted!r}")


_STUB_MODEL: Path | None = None


def stub_model_dir() -> Path:
    """A tiny local HF model directory (Qwen2 config + word-level tokenizer), built once per process.

    verl converts model configs with `HFModelConfig`, which loads the tokenizer and the HF config
    from the model path. On a CPU machine without the hub, `validate` points the model paths at
    this stub so that everything else verl checks in those configs still runs; the real model is
    then not checked (see `validate`).
    """
    global _STUB_MODEL
    if _STUB_MODEL is None or not (_STUB_MODEL / "config.json").is_file():
        import atexit
        import shutil
        import tempfile

        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast, Qwen2Config

        d = Path(tempfile.mkdtemp(prefix="routerops-verl-stub-"))
        atexit.register(shutil.rmtree, d, ignore_errors=True)
        vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>",
                                unk_token="<unk>").save_pretrained(d)
        # Smallest valid Qwen2 shapes: the config is read, never instantiated as a model.
        Qwen2Config(vocab_size=len(vocab), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                    num_attention_heads=1, num_key_value_heads=1, architectures=["Qwen2ForCausalLM"]).save_pretrained(d)
        _STUB_MODEL = d
    return _STUB_MODEL


def validate(cfg: DictConfig, *, agent_name: str | None = None, use_stub_model: bool | None = None) -> list[str]:
    """Run verl's own config validation on CPU; returns what was checked.

    Mirrors what `verl.trainer.main_ppo` and its workers do before touching a GPU:
    `verl.utils.config.validate_config` (batch divisibility, micro-batch settings, conversion of
    the actor config, and of the critic config with its model when a critic is used, and their
    `validate`), plus `omega_conf_to_dataclass` of the algorithm, rollout (as the agent-loop
    workers do), checkpoint-engine and actor model configs. verl's reward-manager config cannot be
    converted on its own in 0.9.1 (verl never does), so it is left out.

    Model configs load the tokenizer and HF config from the model path. When that path is not a
    local directory (a hub id) or `use_stub_model` is True, the check runs against
    `stub_model_dir()` instead, so nothing is downloaded and the real model is not checked.
    Errors are raised as `VerlConfigError` carrying verl's message.
    """
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    checked: list[str] = []
    # A copy: never mutate the caller's config.
    cfg = cast("DictConfig", OmegaConf.create(OmegaConf.to_container(cfg, resolve=False)))
    sink = io.StringIO()  # verl prints progress lines; keep the caller's stdout clean
    try:
        with contextlib.redirect_stdout(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            OmegaConf.resolve(cfg)  # as verl's TaskRunner does before building anything
            checked.append("interpolations resolve")
            model_path = str(cfg.actor_rollout_ref.model.path)
            stub = use_stub_model if use_stub_model is not None else not Path(model_path).expanduser().is_dir()
            if stub:
                for section in (cfg.actor_rollout_ref.model, cfg.critic.model):
                    section.path = str(stub_model_dir())
                    section.tokenizer_path = None
                    section.hf_config_path = None
                checked.append(f"model configs against a local stub (not {model_path})")
            use_critic, use_ref = need_critic(cfg), need_reference_policy(cfg)
            validate_config(config=cfg, use_reference_policy=use_ref, use_critic=use_critic)
            checked.append(f"verl.utils.config.validate_config (critic={use_critic}, reference={use_ref})")
            for key in ("algorithm", "actor_rollout_ref.rollout", "actor_rollout_ref.rollout.checkpoint_engine",
                        "actor_rollout_ref.model"):
                omega_conf_to_dataclass(OmegaConf.select(cfg, key))
                checked.append(f"omega_conf_to_dataclass({key})")
    except VerlConfigError:
        raise
    except (AssertionError, ValueError, TypeError, KeyError, AttributeError, OmegaConfBaseException,
            HydraException, OSError, RuntimeError, ImportError) as exc:
        msg = str(exc) or repr(exc)
        raise VerlConfigError(f"verl rejected the config: {type(exc).__name__}: {msg}") from exc
    _check_agent_loop_file(cfg, agent_name)
    checked.append("agent loop config names the dataset's agent")
    reward = cfg.reward.custom_reward_function
    if reward.path:
        try:
            from verl.utils.import_utils import load_extern_object

            fn = load_extern_object(module_path=str(reward.path), object_name=str(reward.name))
        except (ImportError, AttributeError, FileNotFoundError, RuntimeError) as exc:
            raise VerlConfigError(f"reward function {reward.path}:{reward.name} cannot be loaded: {exc}") from exc
        if not callable(fn):
            raise VerlConfigError(f"reward function {reward.path}:{reward.name} is not callable")
        checked.append("reward function loads")
    return checked

"""The verl training backend: GPU training of the router with verl 0.9.1 and vLLM/SGLang rollouts.

This package is the only place in the project that imports verl, and it does so lazily (inside
functions, and through a module `__getattr__` for the agent-loop class), so importing any of its
modules, or any other routerops module, never pulls verl, ray, hydra, omegaconf or torch's CUDA
stack in. This file imports nothing: import the module you need.

One job per module:

* `rl_math`: verl's RL math (GRPO advantages, PPO policy loss, KL loss) that both backends run,
  the local CPU trainer and verl.
* `runtime`: what every process verl starts reads: where our params and pool come from, the
  telemetry env, and the per-process cache of params, pool and candidate backend.
* `agent_loop`: `RouterAgentLoop`, the verl agent loop that runs OUR episode loop against verl's
  LLM server manager.
* `reward`: `compute_score`, the reward function for `reward.custom_reward_function`, with its
  per-split cost normalisers and its cost log.
* `costs`: the cost log read back per training step (`summarize_training_costs`).
* `overrides`: Hydra overrides generated from the typed params.
* `validation`: composition with verl's own `ppo_trainer` config and verl's own validation, on CPU.
* `launch`: launch and export commands, the dry run and its report for the CLI;
  `python -m routerops.training.verl.launch PARAMS_YAML OUT_DIR` runs the dry run without the CLI.
"""

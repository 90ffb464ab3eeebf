"""On-policy RL and preference learning for the generalist (issue #18).

One readable file per algorithm over a few shared pieces, CleanRL style:

* :mod:`~flywheel.vla_rl.objectives` - advantages (GAE, group-normalised, leave-one-out), PPO's
  clipped surrogate, GSPO's sequence ratio, KL to a reference, dynamic rejection, GFPO's filter,
  the DPO loss;
* :mod:`~flywheel.vla_rl.policies` - stochastic chunk heads with log-probabilities over a policy's
  frozen features (a Gaussian with a state-dependent scale; a flow head sampled by the SDE of
  :mod:`~flywheel.vla_rl.flow_sde`), each with a value head;
* :mod:`~flywheel.vla_rl.engine` - the rollout engine (vector envs, groups of G, multi-task);
* :mod:`~flywheel.vla_rl.common` - the algorithm base (optimiser, reference, clipped epochs);
* the algorithms: :mod:`~flywheel.vla_rl.ppo`, :mod:`~flywheel.vla_rl.grpo`,
  :mod:`~flywheel.vla_rl.rloo` (LOOP), :mod:`~flywheel.vla_rl.gspo`, :mod:`~flywheel.vla_rl.gfpo`,
  :mod:`~flywheel.vla_rl.dpo` (GRAPE), and :mod:`~flywheel.vla_rl.prm` (process reward model);
* :mod:`~flywheel.vla_rl.trainer` - the resumable training loop; :mod:`~flywheel.vla_rl.cli` -
  ``flywheel-vla-rl``.

Nothing here runs at import; torch loads with the submodules.
"""

ALGORITHMS = ("ppo", "grpo", "rloo", "gspo", "gfpo", "dpo")


def algorithm(name: str):
    """(Algorithm class, its config class) for ``name`` (one of :data:`ALGORITHMS`)."""
    import importlib

    if name not in ALGORITHMS:
        raise ValueError(f"algo={name!r}: use one of {', '.join(ALGORITHMS)}")
    mod = importlib.import_module(f"flywheel.vla_rl.{name}")
    cls = {"ppo": "PPO", "grpo": "GRPO", "rloo": "RLOO", "gspo": "GSPO", "gfpo": "GFPO", "dpo": "DPO"}[name]
    return getattr(mod, cls), getattr(mod, f"{cls}Config")

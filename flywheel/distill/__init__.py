"""Distillation into the generalist: what the specialists learned flows back into the one deployed model.

* :mod:`flywheel.distill.collect` -- rollouts into the episode store, tagged by source and collection;
  resumable by seed; success selection.
* :mod:`flywheel.distill.specialist` -- per-task specialists on privileged state (``sac``, ``sil``,
  ``scripted`` stand-in).
* :mod:`flywheel.distill.generalist` -- store -> VLA batches, resumable fine-tuning, held-out evaluation.
* :mod:`flywheel.distill.compact` -- the compact VLA family there (fine-tuning on cached encoder features).
* :mod:`flywheel.distill.rldg` -- RLDG and its human-demo baseline.
* :mod:`flywheel.distill.ire_vla` -- iRe-VLA (RL with the backbone frozen on cached latents, then SL).
* :mod:`flywheel.distill.cli` -- ``flywheel-distill method=rldg|ire_vla``.

Nothing heavy is imported here.
"""

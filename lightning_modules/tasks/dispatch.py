"""`python run.py task=NAME`: the one table from task names to what runs them."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

# Each task's function, imported when it runs: `task=train` does not load the dubbing and evaluation
# stacks (nor their detectors), and a DDP child re-running run.py starts as fast as it can.
TASKS = {
    "train": "lightning_modules.tasks.train.fit_and_evaluate",
    "test": "lightning_modules.tasks.train.fit_and_evaluate",
    "validate": "lightning_modules.tasks.train.fit_and_evaluate",
    "predict": "lightning_modules.tasks.train.fit_and_evaluate",
    "synthesize": "lightning_modules.tasks.data.synthesize",
    "preprocess": "lightning_modules.tasks.data.preprocess",
    "dub": "lightning_modules.tasks.dub.run_dub",
    "animate": "lightning_modules.tasks.animate.run_animate",
    "eval": "lightning_modules.evaluation.dubbing.run_evaluation",
    "eval_motion": "lightning_modules.evaluation.motion.run_motion_evaluation",
}


def run_task(cfg: DictConfig) -> float | None:
    """Dispatch on `cfg.task`; returns the optimised metric for train / test, None otherwise."""
    if cfg.task not in TASKS:
        raise ValueError(f"task={cfg.task!r} is not one of {sorted(TASKS)}")
    result = hydra.utils.get_method(TASKS[cfg.task])(cfg)
    return result if isinstance(result, float) else None

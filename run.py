"""The suite's single entry point: `python run.py experiment=stage1 [group=option ...] [key=value ...]`.

Hydra composes `conf/config.yaml`; `task` picks what runs. Everything else lives in the packages.
"""

import os
from pathlib import Path

os.environ.setdefault("SYNERGYDUB_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from lightning_modules.common.config import register_resolvers  # noqa: E402
from lightning_modules.tasks.dispatch import run_task  # noqa: E402

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Returns `optimized_metric` so that Hydra sweepers (Optuna) can minimise it."""
    return run_task(cfg)


if __name__ == "__main__":
    main()

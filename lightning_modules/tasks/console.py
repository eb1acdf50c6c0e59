"""What the console scripts (`synergydub-dub`, `synergydub-animate`) share: the suite's config composed from
their Hydra overrides as `python run.py` would, and a user's error printed as one line."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightning_modules.common.config import compose_config
from lightning_modules.common.errors import ConfigurationError, DubbingError


def run_console_script(task: Callable[[DictConfig], Any], overrides: list[str]) -> None:
    """`task(cfg)` on the config of `overrides` (run directory `<paths.log_dir>/<task>/cli`); an input or
    setting the task refuses exits with `error: <the reason>` instead of a traceback."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = compose_config(overrides, hydra_config=False)
    OmegaConf.set_struct(cfg, False)
    try:
        task(cfg)
    except (DubbingError, ConfigurationError) as error:
        raise SystemExit(f"error: {error}") from None

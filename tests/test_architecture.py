"""The layout's rules hold (docs/architecture.md): layers import downward only, no import cycles, bench
never imports tests, a test module imports no other test module; and checkpoints written before the
layout moved their classes still load and dub."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import torch

from lightning_modules.common.checkpoints import MOVED_TARGETS, load_trained_module, run_config
from tests.helpers import ROOT


def test_the_import_contracts_hold() -> None:
    """import-linter's contracts in pyproject.toml: the layers, media below the rest of datamodules, and
    no cycle between sibling modules of any package."""
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_no_test_module_imports_another_and_bench_imports_no_tests() -> None:
    offenders = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        offenders += [f"{path.name}: {m}" for m in _imported_modules(path) if m.startswith("tests.test_")]
    for path in sorted((ROOT / "bench").glob("*.py")):
        offenders += [
            f"bench/{path.name}: {m}" for m in _imported_modules(path) if m.split(".")[0] == "tests"
        ]
    assert offenders == []


def _as_written_before_the_move(checkpoint: Path, out: Path) -> Path:
    """A copy of a checkpoint with the class paths its run_config would have had before the layout moved
    them (the state dict's keys did not change: the networks kept their attribute names)."""
    old_of = {new: old for old, new in MOVED_TARGETS.items()}

    def back(node):
        if isinstance(node, dict):
            return {k: old_of.get(v, v) if k == "_target_" else back(v) for k, v in node.items()}
        if isinstance(node, list):
            return [back(v) for v in node]
        return node

    contents = torch.load(checkpoint, map_location="cpu", weights_only=True)
    contents["run_config"] = back(contents["run_config"])
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(contents, out)
    return out


def _targets(node) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "_target_"] + [
            t for v in node.values() for t in _targets(v)
        ]
    if isinstance(node, list):
        return [t for v in node for t in _targets(v)]
    return []


def test_a_checkpoint_written_before_the_move_loads_and_dubs(tiny_chain, tiny_corpus, tmp_path) -> None:
    from omegaconf import OmegaConf

    from datamodules.media.video import probe
    from lightning_modules.common.config import compose_config
    from lightning_modules.tasks.dub import run_dub

    a2e = _as_written_before_the_move(tiny_chain.a2e, tmp_path / "old" / "a2e.ckpt")
    renderer = _as_written_before_the_move(tiny_chain.renderer, tmp_path / "old" / "renderer.ckpt")
    stored = torch.load(renderer, map_location="cpu", weights_only=True)["run_config"]
    old_targets = [t for t in _targets(stored) if t in MOVED_TARGETS]
    assert "lightning_modules.stage4.RendererStage4" in old_targets  # the copy really has the old paths
    assert not [t for t in _targets(OmegaConf.to_container(run_config(renderer))) if t in MOVED_TARGETS]
    module, _ = load_trained_module(renderer)
    assert type(module).__module__ == "lightning_modules.renderer.stage4"

    video, speech = sorted(tiny_corpus.raw_dir.glob("mp4/*/*/*.mp4"))[:2]
    cfg = compose_config(
        [
            "task=dub",
            f"paths.log_dir={tmp_path}",
            f"generator.a2e_checkpoint={a2e}",
            f"generator.renderer_checkpoint={renderer}",
            "dub.progress=false",
            f"video={video}",
            f"audio={speech}",
            f"output={tmp_path / 'out.mp4'}",
        ],
        tmp_path / "run",
    )
    (report,) = run_dub(cfg)
    assert probe(report["output"]).num_frames == probe(video).num_frames

"""`ShardDataModule`: the one LightningDataModule every stage trains from, over the clip shards.

Training is built on litdata (`StreamingDataset` + `StreamingDataLoader`):
- disjoint across DDP ranks and nodes: litdata assigns chunks per (rank, worker) from the distributed
  environment, and drops the tail so every rank sees as many samples (Lightning's own distributed
  sampler must be off: `use_distributed_sampler: false` in conf/trainer);
- `examples_per_clip` draws per clip and epoch (litdata's upsampling), so that few clips still fill
  paper-size batches;
- seeded and deterministic: the shuffle is litdata's seeded one and each example draws its randomness
  from (seed, epoch, sample index) (datamodules/datasets.py);
- resumable mid-epoch: the train loader's `state_dict()` goes into the checkpoint through this
  module's `state_dict` / `load_state_dict` hooks, and a loader rebuilt from it yields exactly the
  samples not yet seen, then fresh epochs (`ResumableLoader`).

Validation, test and prediction read clips by index (`datasets.EvaluationExamples`): every frame of
every clip, in windows (`view: window`, `eval_window_frames`; prediction: whole clips) or one by one
(`view: frame`), each rank taking one contiguous block, so that the scores cover every clip exactly
once under any number of ranks (a distributed sampler would repeat examples, litdata drops the tail).

The same code serves every corpus; `view` picks the per-stage dataset. Shards live in
`shard_dir/{train,val,test}` (see datamodules/shards.py).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from litdata import StreamingDataLoader
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from datamodules.datasets import (
    REFERENCE_POLICIES,
    VIEWS,
    ClipDataset,
    EvaluationExamples,
    PhotometricJitter,
    ViewOptions,
    evaluation_items,
)
from datamodules.preprocess import (
    PREPROCESS_VERSION,
    preprocess_corpus,
    preprocess_recipe,
    settings_from_config,
)
from datamodules.recipe import face_model_recipe, read_recipe, recipe_differences
from datamodules.shards import MANIFEST_NAME, clip_frame_counts, is_complete_shard_dir
from datamodules.synthetic import corpus_recipe, generate_corpus

log = logging.getLogger(__name__)


class ResumableLoader(StreamingDataLoader):
    """A StreamingDataLoader whose restored epoch ends when the trainer stops asking for batches.

    litdata replays the loaded state until an iteration runs to StopIteration; Lightning ends an epoch
    after `len(loader)` batches without asking once more, so a plain loader restored mid-epoch would
    replay the same remainder again in the next epoch. Here the iteration after the restored one
    always starts a fresh epoch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._restored_epoch_started = False

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        super().load_state_dict(obj)
        self._restored_epoch_started = False

    def __iter__(self) -> Any:
        if self.restore and self._restored_epoch_started:
            self.restore = False
        self._restored_epoch_started = self.restore
        yield from super().__iter__()


def as_plain(node: Any) -> Any:
    """A config node as plain dicts and lists (interpolations resolved); anything else unchanged."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


class ShardDataModule(L.LightningDataModule):
    """Args mirror conf/data/<corpus>.yaml. `synthetic` and `preprocess` are the generator's and the
    preprocessing's settings: unused here except to build the corpus when its shards are missing."""

    def __init__(
        self,
        corpus: str,
        shard_dir: str,
        view: str = "window",
        batch_size: int = 8,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 1234,
        image_size: int = 128,
        examples_per_clip: int = 1,
        window_frames: int = 5,
        eval_window_frames: int | None = None,
        mfcc_window: int = 28,
        mel_window: int = 16,
        load_frames: bool = False,
        num_references: int = 2,
        reference_policy: str = "random",
        reference_min_gap: int = 5,
        mask_mode: str = "lower_half",
        mask_dilation: float = 0.03,
        augment: dict[str, float] | None = None,
        synthetic: dict[str, Any] | None = None,
        preprocess: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if view not in VIEWS:
            raise ValueError(f"view must be one of {sorted(VIEWS)}, got {view!r}")
        if examples_per_clip < 1:
            raise ValueError(f"examples_per_clip must be at least 1, got {examples_per_clip}")
        if reference_policy not in REFERENCE_POLICIES:
            raise ValueError(
                f"reference_policy must be one of {REFERENCE_POLICIES}, got {reference_policy!r}"
            )
        # Kept whole: it is the `data` config node, which the corpus builders take (see prepare_data).
        # Not logged: run.py logs the whole config, and a key shared with the model (image_size, ...)
        # would make Lightning refuse to merge the two sets of hyperparameters.
        # Plain containers, not DictConfig: checkpoints then load with torch.load(weights_only=True).
        synthetic, preprocess, augment = (as_plain(node) for node in (synthetic, preprocess, augment))
        self.save_hyperparameters(logger=False)
        self.corpus = corpus
        self.shard_dir = Path(shard_dir)
        self.view = view
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.seed = seed
        self.examples_per_clip = examples_per_clip
        self.options = ViewOptions(
            image_size=image_size,
            window_frames=window_frames,
            mfcc_window=mfcc_window,
            mel_window=mel_window,
            load_frames=load_frames,
            num_references=num_references,
            reference_policy=reference_policy,
            reference_min_gap=reference_min_gap,
            mask_mode=mask_mode,
            mask_dilation=mask_dilation,
            jitter=PhotometricJitter(**dict(augment or {})),
        )
        self.eval_window_frames = eval_window_frames
        self.datasets: dict[str, ClipDataset] = {}
        self.evaluation: dict[str, EvaluationExamples] = {}
        self._train_loader: ResumableLoader | None = None
        self._train_loader_state: dict[str, Any] | None = None

    def split_dir(self, split: str) -> Path:
        return self.shard_dir / split

    # --- building the shards -----------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Check that the shards are there and were made as the config asks (their `recipe.json`,
        datamodules/recipe.py); build the synthetic corpus when they are not.

        The synthetic corpus is (re)built whenever it is missing or was made otherwise (the raw corpus
        too, if its own recipe differs), with the differences logged; its teacher is not compared, so
        shards preprocessed with a teacher stay usable without naming it again. A real corpus is never
        rebuilt here: missing shards, shards of another preprocessing version (other keys), or shards
        fitted with another face model than the configured one, stop with a message. The shards are ready
        once the manifest exists (preprocessing writes it last), so a run killed while packing is finished
        here rather than trained on half a corpus."""

        cfg = OmegaConf.create(dict(self.hparams))
        if self.corpus != "synthetic":
            if not self.shards_ready():
                raise FileNotFoundError(
                    f"no complete shards for corpus {self.corpus!r} in {self.shard_dir} (need train/ and "
                    f"{MANIFEST_NAME}); run `python run.py task=preprocess data={self.corpus}` first"
                )
            recorded = read_recipe(self.shard_dir)
            if recorded is None:
                log.warning(
                    "%s has no recipe.json: which face model fitted it cannot be checked", self.shard_dir
                )
                return
            if recorded.get("version") != PREPROCESS_VERSION:
                raise ValueError(
                    f"the shards in {self.shard_dir} were made by preprocessing version "
                    f"{recorded.get('version')}, this code reads version {PREPROCESS_VERSION} (its samples "
                    "have other keys): preprocess again "
                    f"(`python run.py task=preprocess data={self.corpus}`) into a new shard_dir"
                )
            changes = recipe_differences(recorded["face_model"], face_model_recipe(cfg.preprocess.face_model))
            if changes:
                raise ValueError(
                    f"the shards in {self.shard_dir} were fitted with another face model than the configured "
                    f"one ({'; '.join(changes)}): their coefficients mean nothing to it. Configure the face "
                    "model they were made with (face_model=...), or preprocess again into a new shard_dir"
                )
            return

        settings = settings_from_config(cfg)
        wanted = preprocess_recipe(
            settings, corpus_recipe(**OmegaConf.to_container(cfg.synthetic, resolve=True))
        )
        if self.shards_ready():
            recorded = read_recipe(self.shard_dir)
            changes = (
                recipe_differences({**recorded, "teacher": None}, {**wanted, "teacher": None})
                if recorded is not None
                else ["no recipe.json (made by an older version)"]
            )
            if not changes:
                return
            log.warning(
                "the synthetic corpus in %s was made otherwise than the config asks, rebuilding it: %s",
                self.shard_dir,
                "; ".join(changes),
            )
            shutil.rmtree(self.shard_dir)
        work = read_recipe(settings.work_dir)
        if work is not None and recipe_differences(work, wanted):
            # Per-clip results of another corpus: of no use (a build killed part-way keeps its own).
            shutil.rmtree(settings.work_dir)
        log.info("no shards in %s: generating and preprocessing the synthetic corpus", self.shard_dir)
        generate_corpus(cfg)
        preprocess_corpus(cfg)
        if not self.shards_ready():
            raise RuntimeError(
                f"preprocessing the synthetic corpus left no complete shards in {self.shard_dir}"
            )

    def shards_ready(self) -> bool:
        return is_complete_shard_dir(self.split_dir("train")) and (self.shard_dir / MANIFEST_NAME).is_file()

    # --- datasets and loaders ----------------------------------------------------------------------

    def make_dataset(self, split: str, task: str = "fit") -> ClipDataset:
        """The `view` dataset of one split: shuffled, with fresh draws each epoch and `examples_per_clip`
        per clip, for training; otherwise read by index, with windows of `eval_window_frames` (whole
        clips for prediction)."""
        path = self.split_dir(split)
        if not is_complete_shard_dir(path):
            raise FileNotFoundError(
                f"no {split} shards in {path}; run `python run.py task=preprocess data={self.corpus}`"
            )
        if split == "train" and task == "fit":
            return VIEWS[self.view](
                str(path),
                self.options,
                seed=self.seed,
                shuffle=True,
                vary_per_epoch=True,
                drop_last=None,
                examples_per_clip=self.examples_per_clip,
            )
        window = None if task == "predict" else (self.eval_window_frames or self.options.window_frames)
        options = replace(self.options, window_frames=window)
        return VIEWS[self.view](str(path), options, seed=self.seed, shuffle=False, vary_per_epoch=False)

    def _rank(self) -> tuple[int, int]:
        """(rank, world size): the trainer's when one is attached, else the process group's, else (0, 1)."""
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def evaluation_examples(self, split: str, task: str) -> EvaluationExamples:
        """This rank's block of the examples covering every frame of every clip of `split`."""
        key = f"{task}/{split}"
        if key not in self.evaluation:
            examples = self.make_dataset(split, task)
            rank, world_size = self._rank()
            counts = clip_frame_counts(self.split_dir(split))
            self.evaluation[key] = EvaluationExamples(
                examples, evaluation_items(examples, counts, rank, world_size)
            )
        return self.evaluation[key]

    def setup(self, stage: str | None = None) -> None:
        """The training dataset is built here, after the process group exists, so litdata sees the DDP
        ranks; the evaluation examples when their loader is asked for (a split that is not on disk is an
        error only then, e.g. no val/ is fine with `limit_val_batches=0`)."""
        if (
            stage in (None, "fit")
            and "train" not in self.datasets
            and is_complete_shard_dir(self.split_dir("train"))
        ):
            self.datasets["train"] = self.make_dataset("train")

    def train_dataloader(self) -> ResumableLoader:
        if "train" not in self.datasets:
            self.datasets["train"] = self.make_dataset("train")
        # train drops the last partial batch (litdata batches per rank and loader worker).
        self._train_loader = ResumableLoader(
            self.datasets["train"],
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            drop_last=True,
        )
        if len(self._train_loader) == 0:
            clips = len(clip_frame_counts(self.split_dir("train")))
            _, world_size = self._rank()
            raise ValueError(
                f"{self.split_dir('train')} holds {clips} clips, {clips * self.examples_per_clip} training "
                f"examples an epoch at data.examples_per_clip={self.examples_per_clip}: not one full batch "
                f"of {self.batch_size} for each of {world_size} rank(s) x {max(self.num_workers, 1)} loader "
                "worker(s); raise data.examples_per_clip, or lower data.batch_size or data.num_workers"
            )
        if self._train_loader_state is not None:
            self._train_loader.load_state_dict(self._train_loader_state)
            self._train_loader_state = None
        return self._train_loader

    def _evaluation_loader(self, split: str, task: str) -> DataLoader:
        return DataLoader(
            self.evaluation_examples(split, task),
            # Prediction takes whole clips, whose lengths differ: one clip a batch.
            batch_size=1 if task == "predict" and self.view == "window" else self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            drop_last=False,
        )

    def val_dataloader(self) -> DataLoader:
        return self._evaluation_loader("val", "validate")

    def test_dataloader(self) -> DataLoader:
        return self._evaluation_loader("test", "test")

    def predict_dataloader(self) -> DataLoader:
        return self._evaluation_loader("test", "predict")

    # --- mid-epoch resume --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Saved in the Lightning checkpoint: where the train loader is in its epoch."""
        if self._train_loader is None:
            return {}
        return {"train_loader": self._train_loader.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Called by Lightning before the loaders exist: kept until `train_dataloader` builds one."""
        state = state_dict.get("train_loader")
        if state is None:
            return
        if self._train_loader is not None:
            self._train_loader.load_state_dict(state)
        else:
            self._train_loader_state = state

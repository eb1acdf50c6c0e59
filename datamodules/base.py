"""`ShardDataModule`: the one LightningDataModule every stage trains from, over the clip shards.

Built on litdata (`StreamingDataset` + `StreamingDataLoader`):
- disjoint across DDP ranks and nodes: litdata assigns chunks per (rank, worker) from the distributed
  environment, and drops the tail so every rank sees as many samples (Lightning's own distributed
  sampler must be off: `use_distributed_sampler: false` in conf/trainer);
- seeded and deterministic: the shuffle is litdata's seeded one and each example draws its randomness
  from (seed, epoch, sample index) (datamodules/datasets.py);
- resumable mid-epoch: the train loader's `state_dict()` goes into the checkpoint through this
  module's `state_dict` / `load_state_dict` hooks, and a loader rebuilt from it yields exactly the
  samples not yet seen, then fresh epochs (`ResumableLoader`).

The same code serves every corpus; `view` picks the per-stage dataset. Shards live in
`shard_dir/{train,val,test}` (see datamodules/shards.py).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
from litdata import StreamingDataLoader
from omegaconf import OmegaConf

from datamodules.datasets import REFERENCE_POLICIES, VIEWS, ClipDataset, PhotometricJitter, ViewOptions
from datamodules.shards import MANIFEST_NAME, SPLITS, is_complete_shard_dir

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
        self._train_loader: ResumableLoader | None = None
        self._train_loader_state: dict[str, Any] | None = None

    def split_dir(self, split: str) -> Path:
        return self.shard_dir / split

    # --- building the shards -----------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Build the synthetic corpus and its shards on first use; for a real corpus, say how.

        The shards are ready once the manifest exists (preprocessing writes it after every split), so a
        run killed while packing is finished here rather than trained on half a corpus."""
        if self.shards_ready():
            return
        if self.corpus != "synthetic":
            raise FileNotFoundError(
                f"no complete shards for corpus {self.corpus!r} in {self.shard_dir} (need train/ and "
                f"{MANIFEST_NAME}); run `python run.py task=preprocess data={self.corpus}` first"
            )
        from datamodules.preprocess import preprocess_corpus
        from datamodules.synthetic import generate_corpus

        cfg = OmegaConf.create(dict(self.hparams))
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

    def make_dataset(self, split: str) -> ClipDataset:
        """The `view` dataset of one split: shuffled, with fresh draws each epoch, for train only; the
        evaluation splits take windows of `eval_window_frames` when it is set."""
        path = self.split_dir(split)
        if not is_complete_shard_dir(path):
            raise FileNotFoundError(
                f"no {split} shards in {path}; run `python run.py task=preprocess data={self.corpus}`"
            )
        train = split == "train"
        options = self.options
        if not train and self.eval_window_frames is not None:
            options = replace(options, window_frames=self.eval_window_frames)
        return VIEWS[self.view](
            str(path), options, seed=self.seed, shuffle=train, vary_per_epoch=train, drop_last=None
        )

    def setup(self, stage: str | None = None) -> None:
        """Datasets are built here, after the process group exists, so litdata sees the DDP ranks. A
        split that is not on disk is an error only when its loader is asked for (e.g. no val/ with
        `limit_val_batches=0`)."""
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage or "", SPLITS):
            if split not in self.datasets and is_complete_shard_dir(self.split_dir(split)):
                self.datasets[split] = self.make_dataset(split)

    def make_loader(self, split: str) -> ResumableLoader:
        if split not in self.datasets:
            self.datasets[split] = self.make_dataset(split)
        return ResumableLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            # train drops the last partial batch; val/test keep litdata's default, which under DDP drops
            # the tail so that every rank runs as many steps (a rank with an extra step would hang the
            # others in a synchronised log).
            drop_last=True if split == "train" else None,
        )

    def train_dataloader(self) -> ResumableLoader:
        self._train_loader = self.make_loader("train")
        if len(self._train_loader) == 0:  # litdata batches per (rank, worker) and drops partial batches
            raise ValueError(
                f"{self.split_dir('train')} holds {len(self.datasets['train'])} clips: not one full batch of "
                f"{self.batch_size} per rank and loader worker ({self.num_workers} workers); lower "
                "data.batch_size or data.num_workers, or make the corpus larger"
            )
        if self._train_loader_state is not None:
            self._train_loader.load_state_dict(self._train_loader_state)
            self._train_loader_state = None
        return self._train_loader

    def val_dataloader(self) -> ResumableLoader:
        return self.make_loader("val")

    def test_dataloader(self) -> ResumableLoader:
        return self.make_loader("test")

    def predict_dataloader(self) -> ResumableLoader:
        return self.make_loader("test")

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

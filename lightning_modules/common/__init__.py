"""What every other part of lightning_modules shares: checkpoint reading, Hydra helpers, run files and
`ckpt_path=last`, optimisers, pretrained-weight paths and the user-facing errors. Imports nothing else
from lightning_modules."""

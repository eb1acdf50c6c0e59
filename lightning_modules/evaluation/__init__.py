"""Evaluation: the dubbing tables (the main paper's Table 1 and Table 3, `dubbing.py`), the motion DiT's
evaluation (`motion.py`), and the tables of finished runs and sweeps (`report.py`, `tables.py`). Built on
the inference layer (the same generators `task=dub` runs); knows no task names or command lines."""

"""Reader for Deep3DFaceRecon's `BFM_model_front.mat` (Deng et al. 2019; sicxu/Deep3DFaceRecon_pytorch).

Fields and shapes (N = 35,709 vertices, F = 70,789 triangles for the real file):
meanshape (1, 3N) or (3N, 1); idBase (3N, 80); exBase (3N, 64); meantex (1, 3N) in 0..255;
texBase (3N, 80); tri (F, 3), point_buf (N, 8) and keypoints (68,) are 1-based (MATLAB).
point_buf pads with F + 1 (1-based), i.e. F after the shift: the index of an extra zero normal.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy.io import loadmat

REQUIRED_FIELDS = ("meanshape", "idBase", "exBase", "meantex", "texBase", "tri", "point_buf", "keypoints")

HOW_TO_OBTAIN = (
    "BFM_model_front.mat is derived from the licensed Basel Face Model 2009: request 01_MorphableModel.mat "
    "at https://faces.dmi.unibas.ch/bfm/ , download Exp_Pca.bin (Guo et al., Deep3DFaceRecon's README), "
    "and let Deep3DFaceRecon_pytorch build BFM/BFM_model_front.mat (util/load_mats.py: transferBFM09); "
    "then set face_model.bfm_path to it (conf/face_model/bfm.yaml), or use face_model=procedural."
)


def load_bfm_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read BFM_model_front.mat into 0-based arrays (the layout `MorphableModel` expects)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: BFM model file not found. {HOW_TO_OBTAIN}")
    try:
        mat = loadmat(str(path))
    except Exception as error:  # scipy raises several types for a corrupt or non-MAT file
        raise ValueError(f"{path}: not a readable MATLAB file ({error})") from error
    missing = [k for k in REQUIRED_FIELDS if k not in mat]
    if missing:
        raise ValueError(f"{path}: not a BFM_model_front.mat file, missing fields {missing}")
    n3 = mat["meanshape"].size
    if n3 % 3:
        raise ValueError(f"{path}: meanshape has {n3} values, not a multiple of 3")
    arrays = {
        "meanshape": mat["meanshape"].reshape(1, n3).astype(np.float32),
        "idBase": mat["idBase"].astype(np.float32),
        "exBase": mat["exBase"].astype(np.float32),
        "meantex": mat["meantex"].reshape(1, n3).astype(np.float32),
        "texBase": mat["texBase"].astype(np.float32),
        "tri": mat["tri"].astype(np.int64) - 1,
        "point_buf": mat["point_buf"].astype(np.int64) - 1,
        "keypoints": np.squeeze(mat["keypoints"]).astype(np.int64) - 1,
    }
    for key in ("idBase", "exBase", "texBase"):
        if arrays[key].shape[0] != n3:
            raise ValueError(f"{path}: {key} has {arrays[key].shape[0]} rows, expected 3N = {n3}")
    num_faces = arrays["tri"].shape[0]
    if arrays["tri"].ndim != 2 or arrays["tri"].shape[1] != 3 or arrays["tri"].min() < 0:
        raise ValueError(f"{path}: tri must be (F, 3) with 1-based indices")
    if arrays["point_buf"].min() < 0 or arrays["point_buf"].max() > num_faces:
        raise ValueError(f"{path}: point_buf must hold 1-based face indices in 1..F+1")
    return arrays

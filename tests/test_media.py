"""The media helpers every layer shares: image layouts and atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.media.files import atomic_write
from datamodules.media.images import to_float_images, to_uint8_images


def test_image_layouts_round_trip_and_come_back_c_contiguous() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (3, 7, 5, 3), dtype=np.uint8)
    images = to_float_images(frames)
    assert images.shape == (3, 3, 7, 5) and images.dtype == torch.float32
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    back = to_uint8_images(images)
    assert back.flags["C_CONTIGUOUS"] and back.dtype == np.uint8  # dlib and OpenCV need it
    np.testing.assert_array_equal(back, frames)
    single = to_uint8_images(images[0] * 2 - 0.5)  # out of range: clamped, not wrapped
    assert single.shape == (7, 5, 3) and single.min() == 0 and single.max() == 255


def test_an_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path) -> None:
    path = tmp_path / "record.json"
    with atomic_write(path) as handle:
        handle.write("old")
    with pytest.raises(RuntimeError), atomic_write(path) as handle:
        handle.write("half of the new")
        raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]  # no temporary left behind

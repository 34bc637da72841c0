"""How a candidate's bytes become the BGR array the test pipeline gets (``images.decode_bgr``),
against OpenCV's own loader, the one mmcv's ``LoadImageFromFile`` uses in training."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from ray_app.infer.images import decode_bgr

RGB = (200, 30, 90)


def encoded(image: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kw)
    return out.getvalue()


def test_colour_images_come_back_in_bgr_order_and_contiguous():
    data = encoded(Image.new("RGB", (5, 3), RGB), "PNG")
    bgr = decode_bgr(data)
    assert bgr.shape == (3, 5, 3) and bgr.dtype == np.uint8 and bgr.flags.c_contiguous
    assert tuple(bgr[1, 2]) == RGB[::-1]
    assert np.array_equal(bgr, cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_other_modes_give_three_channels(mode):
    data = encoded(Image.new("RGB", (4, 4), RGB).convert(mode), "PNG")
    bgr = decode_bgr(data)
    assert bgr.shape == (4, 4, 3) and bgr.flags.c_contiguous


def test_exif_orientation_is_applied_as_opencv_does():
    """A 6 x 2 image tagged "rotate 90° clockwise" is 2 wide and 6 high once loaded."""
    image = Image.new("RGB", (6, 2), RGB)
    image.putpixel((0, 0), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW
    data = encoded(image, "PNG", exif=exif)
    bgr = decode_bgr(data)
    assert bgr.shape == (6, 2, 3)
    assert np.array_equal(bgr, cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))


def test_a_truncated_or_empty_file_raises():
    data = encoded(Image.new("RGB", (64, 64), RGB), "JPEG", quality=90)
    with pytest.raises(OSError):
        decode_bgr(data[:200])
    with pytest.raises(ValueError, match="empty"):
        decode_bgr(b"")

"""Image I/O: formats, bit depths, greyscale/alpha/palette, corrupt files, atomic writes, rounding."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.core import atomic
from pipeline.core.imageio import ImageReadError, image_size, list_images, read_image, to_uint8, write_image


@pytest.fixture
def rgb8() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(13, 17, 3), dtype=np.uint8)


def _expect(img: torch.Tensor, ref_hwc: np.ndarray, denom: float) -> None:
    assert img.shape == (1, 3, ref_hwc.shape[0], ref_hwc.shape[1])
    assert img.dtype == torch.float32
    np.testing.assert_allclose(img[0].permute(1, 2, 0).numpy(), ref_hwc.astype(np.float32) / denom, atol=1e-7)


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif", ".tiff"])
def test_lossless_8bit_rgb(tmp_path, rgb8, ext):
    path = tmp_path / f"a{ext}"
    Image.fromarray(rgb8).save(path)
    _expect(read_image(path), rgb8, 255.0)


def test_jpeg(tmp_path, rgb8):
    path = tmp_path / "a.jpg"
    Image.fromarray(rgb8).save(path, quality=95)
    img = read_image(path)
    ref = np.asarray(Image.open(path).convert("RGB"))
    _expect(img, ref, 255.0)


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_rgb_full_precision(tmp_path, ext):
    rgb16 = np.random.default_rng(1).integers(0, 65536, size=(9, 11, 3), dtype=np.uint16)
    path = tmp_path / f"a{ext}"
    assert cv2.imwrite(str(path), rgb16[..., ::-1])  # OpenCV writes BGR
    img = read_image(path)
    _expect(img, rgb16, 65535.0)
    # really 16-bit: values that an 8-bit decode cannot produce
    assert not np.allclose(img.numpy() * 255, np.round(img.numpy() * 255), atol=1e-3)


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_grey_replicated(tmp_path, ext):
    g16 = np.random.default_rng(2).integers(0, 65536, size=(7, 5), dtype=np.uint16)
    path = tmp_path / f"g{ext}"
    assert cv2.imwrite(str(path), g16)
    _expect(read_image(path), np.repeat(g16[:, :, None], 3, axis=2), 65535.0)


def test_greyscale_replicated(tmp_path):
    g = np.arange(60, dtype=np.uint8).reshape(6, 10)
    path = tmp_path / "g.png"
    Image.fromarray(g, mode="L").save(path)
    _expect(read_image(path), np.repeat(g[:, :, None], 3, axis=2), 255.0)


def test_rgba_alpha_dropped_with_warning_naming_file(tmp_path, rgb8):
    rgba = np.concatenate([rgb8, np.full(rgb8.shape[:2] + (1,), 7, np.uint8)], axis=2)
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    with pytest.warns(UserWarning, match=r"alpha\.png: alpha channel dropped"):
        img = read_image(path)
    _expect(img, rgb8, 255.0)


def test_palette_converted(tmp_path, rgb8):
    pal = Image.fromarray(rgb8).quantize(colors=16)
    path = tmp_path / "pal.png"
    pal.save(path)
    ref = np.asarray(pal.convert("RGB"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no alpha: no warning
        _expect(read_image(path), ref, 255.0)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_truncated_file_names_file(tmp_path, rgb8, ext):
    big = np.random.default_rng(3).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    path = tmp_path / f"t{ext}"
    Image.fromarray(big).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=rf"t\{ext}: corrupt or truncated"):
        read_image(path)


def test_non_image_and_missing_files(tmp_path):
    txt = tmp_path / "notes.png"
    txt.write_text("this is not an image")
    with pytest.raises(ImageReadError, match=r"notes\.png: not a recognised image"):
        read_image(txt)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty.png"):
        read_image(empty)
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.png")


def test_corrupt_png_data_names_file(tmp_path, rgb8):
    path = tmp_path / "c.png"
    Image.fromarray(rgb8).save(path)
    data = bytearray(path.read_bytes())
    idat = data.find(b"IDAT")
    data[idat + 8 : idat + 20] = b"\x00" * 12  # garble compressed pixel data
    path.write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match=r"c\.png"):
        read_image(path)


def test_write_rounds_not_truncates(tmp_path):
    img = torch.tensor([0.0, 0.5 / 255, 0.49 / 255, 1.6 / 255, 254.5 / 255, 1.2]).view(1, 1, 2, 3).expand(1, 3, 2, 3)
    path = write_image(tmp_path / "r.png", img)
    back = np.asarray(Image.open(path))[..., 0].ravel().tolist()
    assert back == [0, 0, 0, 2, 254, 255]  # np.rint: half to even for exact .5 (0.5 -> 0, 254.5 -> 254)
    assert to_uint8(torch.full((3, 1, 1), 0.6 / 255)).item(0) == 1


def test_write_read_round_trip_exact(tmp_path, rgb8):
    img = torch.from_numpy(rgb8).permute(2, 0, 1).float().div(255).unsqueeze(0)
    write_image(tmp_path / "x.png", img)
    assert torch.equal(read_image(tmp_path / "x.png"), img)
    assert image_size(tmp_path / "x.png") == (13, 17)


def test_atomic_write_survives_failure_mid_write(tmp_path, rgb8, monkeypatch):
    target = tmp_path / "out.png"
    write_image(target, torch.zeros(1, 3, 4, 4))
    before = target.read_bytes()
    calls = {"n": 0}

    def failing_fsync(fd):  # the PNG bytes are in the temp file; the "disk" fails before the rename
        calls["n"] += 1
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(atomic.os, "fsync", failing_fsync)
    new = torch.from_numpy(rgb8).permute(2, 0, 1).float().div(255)
    with pytest.raises(OSError, match="simulated"):
        write_image(target, new)
    assert calls["n"] == 1
    assert target.read_bytes() == before  # the old image is intact under the final name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]  # no temp file left


def test_killed_writer_never_leaves_truncated_final_file(tmp_path):
    """SIGKILL a process in the middle of writing many images: every final-named file is a complete PNG."""
    import signal
    import subprocess
    import sys
    import time

    code = (
        "import torch, sys\n"
        "from pipeline.core.imageio import write_image\n"
        "img = torch.rand(1, 3, 512, 512)\n"
        "print('ready', flush=True)\n"
        "for i in range(10000):\n"
        "    write_image(sys.argv[1] + f'/img{i % 7}.png', img)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("*"))) < 3 and time.monotonic() < deadline:  # a few images in: killed mid-loop
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finals = sorted(tmp_path.glob("img*.png"))
    assert finals, "the writer produced nothing before being killed"
    for f in finals:
        assert read_image(f).shape == (1, 3, 512, 512)


def test_write_refuses_nan_and_non_png(tmp_path):
    with pytest.raises(ValueError, match="NaN"):
        write_image(tmp_path / "n.png", torch.full((1, 3, 2, 2), float("nan")))
    with pytest.raises(ValueError, match="PNG only"):
        write_image(tmp_path / "n.jpg", torch.zeros(1, 3, 2, 2))
    assert not list(tmp_path.iterdir())


def test_list_images_sorted_and_filtered(tmp_path, rgb8):
    for name in ["b.png", "a.JPG", "c.txt", "d.bmp"]:
        p = tmp_path / name
        if name.endswith(".txt"):
            p.write_text("x")
        else:
            Image.fromarray(rgb8).save(p, format="PNG" if name.endswith("png") else None)
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png", "d.bmp"]
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        list_images(tmp_path / "nope")

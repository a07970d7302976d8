"""The input decoder of `pointwear prepare` (perception/decode.py) on real files: the real demo
video and photo, and videos / images written here with PyAV and PIL (rotated video, grayscale,
16-bit, CMYK, palette, EXIF, truncated and fake files, mixed-size folders, huge headers)."""
from __future__ import annotations

import math
import struct
import tracemalloc
import warnings
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from pointwear.errors import InputError
from pointwear.perception.decode import (DecodeOptions, load_image, open_input, parse_time,
                                         select_frames)
from pointwear.perception.options import PrepareOptions

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
if not REAL.exists():
    REAL = Path("/work/shared/data/real")
VIDEO = REAL / "single_person_demo.mp4"
RYOTA = REAL / "ryota.png"


def frames_of(path, **kw):
    info, it = open_input(path, PrepareOptions(**kw))
    return info, list(it)


# -- parse_time ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, fps, want", [
    ("12", 12.0, 12), (" 0 ", 30.0, 0), ("1.5s", 12.0, 18), ("1.5 s", 12.0, 18), ("2S", 25.0, 50),
    (".5s", 30.0, 15), ("00:01.5", 12.0, 18), ("1:00", 10.0, 600), ("1:00:00", 1.0, 3600),
    ("0.1s", 30.0, 3), ("1s", 12.0, 12), ("0.01s", 12.0, 1), (None, 12.0, None),
])
def test_parse_time_examples(text, fps, want):
    assert parse_time(text, fps, "--start") == want


@pytest.mark.parametrize("text", ["", "abc", "-1", "1.5", "1e3s", "nan s", "inf s", "00:75",
                                  "1:60:00", "1.5m", "s", "12 frames", "١٢", "99999999999999999"])
def test_parse_time_refuses_bad_text_naming_the_field(text):
    with pytest.raises(InputError) as e:
        parse_time(text, 12.0, "--end")
    assert e.value.field == "--end"


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 10 ** 9), pad=st.sampled_from(["", " ", "\t", "  "]))
def test_parse_time_frame_numbers_round_trip(n, pad):
    assert parse_time(f"{pad}{n}{pad}", 12.0, "--start") == n


FPS = st.sampled_from([1.0, 12.0, 23.976, 24.0, 25.0, 29.97, 30.0, 59.94, 60.0, 120.0])


@settings(max_examples=300, deadline=None)
@given(ms=st.integers(0, 10 ** 8), fps=FPS, space=st.booleans())
def test_parse_time_seconds_is_the_first_frame_at_or_after(ms, fps, space):
    text = f"{ms / 1000:.3f}{' ' if space else ''}s"
    t = float(text.rstrip("s "))
    r = parse_time(text, fps, "--start")
    assert r >= 0
    assert r / fps >= t - 1e-5 / fps        # frame r is shown at or after t ...
    assert r == 0 or (r - 1) / fps < t      # ... and frame r-1 before it


@settings(max_examples=200, deadline=None)
@given(h=st.integers(0, 30), m=st.integers(0, 59), ms=st.integers(0, 59_999), fps=FPS)
def test_parse_time_clock_equals_seconds(h, m, ms, fps):
    seconds = f"{ms // 1000:02d}.{ms % 1000:03d}"
    total = h * 3600 + m * 60 + ms / 1000
    want = parse_time(f"{total:.3f}s", fps, "--start")
    assert parse_time(f"{h}:{m:02d}:{seconds}", fps, "--start") == want
    if h == 0:
        assert parse_time(f"{m:02d}:{seconds}", fps, "--start") == want


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=12))
def test_parse_time_any_text_is_a_frame_or_an_input_error(text):
    try:
        r = parse_time(text, 24.0, "--start")
    except InputError as e:
        assert e.field == "--start"
    else:
        assert isinstance(r, int) and r >= 0


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 500), start=st.one_of(st.none(), st.integers(0, 499)),
       length=st.one_of(st.none(), st.integers(1, 500)), every=st.integers(1, 20),
       max_frames=st.one_of(st.none(), st.integers(1, 60)))
def test_select_frames_properties(n, start, length, every, max_frames):
    end = None if length is None else (start or 0) + length
    if (start or 0) >= n:
        with pytest.raises(InputError):
            select_frames(n, start, end, every, max_frames)
        return
    picks = select_frames(n, start, end, every, max_frames)
    candidates = list(range(start or 0, n if end is None else min(end, n), every))
    assert picks and set(picks) <= set(candidates)
    assert picks == sorted(set(picks))                     # strictly increasing
    if max_frames is None or len(candidates) <= max_frames:
        assert picks == candidates
    else:
        assert len(picks) == max_frames
        assert picks[0] == candidates[0]
        if max_frames > 1:
            assert picks[-1] == candidates[-1]
            gaps = np.diff([candidates.index(p) for p in picks])
            assert gaps.max() - gaps.min() <= 1            # evenly spread


def test_select_frames_bounds_a_huge_count_before_listing():
    with pytest.raises(InputError) as e:
        select_frames(2 ** 40, None, None, 1, None, "x.mp4")
    assert e.value.field == "--max-frames" and "limit" in e.value.message
    picks = select_frames(2 ** 40, None, None, 1, 5)
    assert picks[0] == 0 and picks[-1] == 2 ** 40 - 1 and len(picks) == 5
    assert len(select_frames(2 ** 40, None, None, 2 ** 30, None)) == 1024


# -- the real video ------------------------------------------------------------------------------

def test_real_video_default_downscales_to_1024_long_side():
    info, frames = frames_of(VIDEO)
    assert info.kind == "video" and info.source == str(VIDEO)
    assert info.size == (1024, 576) and info.original_size == (1920, 1080)
    assert info.scale == pytest.approx(1024 / 1920) and info.rotation == 0
    assert info.fps == pytest.approx(12.0) and info.frame_count == 40 and info.focal_px is None
    assert any("downscaled" in n for n in info.notes)
    assert [f.index for f in frames] == list(range(40))
    for f in frames:
        assert f.rgb.shape == (1024, 576, 3) and f.rgb.dtype == np.uint8 and f.alpha is None
        assert f.time == pytest.approx(f.index / 12.0)
    # the pixels are the video's: frame 0 decoded at full size and shrunk by PIL agrees
    with av.open(str(VIDEO)) as c:
        full = next(c.decode(c.streams.video[0])).to_ndarray(format="rgb24")
    ref = np.asarray(Image.fromarray(full).resize((576, 1024), Image.Resampling.BOX), np.float32)
    assert np.abs(frames[0].rgb.astype(np.float32) - ref).mean() < 2.0


def test_real_video_every_start_end_max_frames():
    info, frames = frames_of(VIDEO, every=2)
    assert len(frames) == 20 and [f.index for f in frames] == list(range(0, 40, 2))
    assert info.fps == pytest.approx(6.0)
    info, frames = frames_of(VIDEO, start="1s", end="2s")
    assert len(frames) == 12 and [f.index for f in frames] == list(range(12, 24))
    assert all(1.0 - 1e-6 <= f.time < 2.0 for f in frames)
    _, frames = frames_of(VIDEO, max_frames=8)
    idx = [f.index for f in frames]
    assert len(idx) == 8 and idx[0] == 0 and idx[-1] == 39
    assert max(np.diff(idx)) - min(np.diff(idx)) <= 1
    info, frames = frames_of(VIDEO, start="00:01.5", end="30", size=256)
    assert [f.index for f in frames] == list(range(18, 30))
    assert info.size == (256, 144) and frames[0].rgb.shape == (256, 144, 3)


def test_real_video_streams_one_frame_at_a_time():
    info, it = open_input(VIDEO, PrepareOptions())
    assert iter(it) is it and not isinstance(it, (list, tuple))
    frame_bytes = 1024 * 576 * 3
    tracemalloc.start()
    try:
        n = 0
        for f in it:
            n += 1
            del f
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 40 and peak < 6 * frame_bytes       # 40 frames would be 40 x


def test_real_video_selection_errors_name_the_field():
    with pytest.raises(InputError) as e:
        open_input(VIDEO, PrepareOptions(start="40"))
    assert e.value.field == "--start" and str(VIDEO) in str(e.value)
    with pytest.raises(InputError) as e:
        open_input(VIDEO, PrepareOptions(start="2s", end="1s"))
    assert e.value.field == "--end"
    with pytest.raises(InputError) as e:
        open_input(VIDEO, PrepareOptions(start="soon"))
    assert e.value.field == "--start"
    for kw, field in (({"every": 0}, "--every"), ({"max_frames": 0}, "--max-frames"),
                      ({"size": 8}, "--size"), ({"max_frames": 10 ** 9}, "--max-frames")):
        with pytest.raises(InputError) as e:
            open_input(VIDEO, PrepareOptions(**kw))
        assert e.value.field == field


# -- videos written here -------------------------------------------------------------------------

def write_video(path: Path, n: int, w: int = 64, h: int = 32, options=None,
                noise: bool = False) -> Path:
    """n frames, black with a white 16x16 block at the stored top-left corner (or random pixels:
    every frame then takes many bytes)."""
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w", options=options or {}) as c:
        s = c.add_stream(codec, rate=10)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        a = np.zeros((h, w, 3), np.uint8)
        a[:16, :16] = 255
        rng = np.random.default_rng(0)
        for _ in range(n):
            if noise:
                a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _boxes(d: bytes, start: int, end: int):
    i = start
    while i + 8 <= end:
        size, kind = struct.unpack(">I4s", d[i:i + 8])
        if size < 8:
            return
        yield i, size, kind
        i += size


def set_mp4_rotation(path: Path, degrees_cw: int) -> None:
    """Write the track header (tkhd) display matrix a phone writes for a clip to be shown turned
    `degrees_cw` clockwise (ffmpeg's `rotate` tag convention: 90 = matrix [0 1; -1 0]). PyAV
    cannot attach stream side data when writing, so the MP4 box is patched in place."""
    d = bytearray(path.read_bytes())
    cos, sin = {0: (1, 0), 90: (0, 1), 180: (-1, 0), 270: (0, -1)}[degrees_cw]
    one = 1 << 16
    for i, size, kind in _boxes(d, 0, len(d)):
        if kind != b"moov":
            continue
        for j, size2, kind2 in _boxes(d, i + 8, i + size):
            if kind2 != b"trak":
                continue
            for k, _, kind3 in _boxes(d, j + 8, j + size2):
                if kind3 == b"tkhd":
                    version = d[k + 8]
                    at = k + 8 + (40 if version == 0 else 52)      # the 3x3 matrix
                    assert struct.unpack(">9i", d[at:at + 36]) == (one, 0, 0, 0, one, 0, 0, 0,
                                                                  1 << 30)
                    d[at:at + 36] = struct.pack(">9i", cos * one, sin * one, 0, -sin * one,
                                                cos * one, 0, 0, 0, 1 << 30)
                    path.write_bytes(bytes(d))
                    return
    raise AssertionError("no tkhd box")


def _bright_corner(rgb: np.ndarray) -> str:
    h, w = rgb.shape[:2]
    q = {"top-left": rgb[:h // 4, :w // 4], "top-right": rgb[:h // 4, -w // 4:],
         "bottom-left": rgb[-h // 4:, :w // 4], "bottom-right": rgb[-h // 4:, -w // 4:]}
    return max(q, key=lambda k: q[k].mean())


@pytest.mark.parametrize("degrees, shape, corner", [
    (0, (32, 64), "top-left"), (90, (64, 32), "top-right"), (180, (32, 64), "bottom-right"),
    (270, (64, 32), "bottom-left")])
def test_rotated_video_is_turned_upright(tmp_path, degrees, shape, corner):
    path = write_video(tmp_path / "rot.mp4", 4)
    set_mp4_rotation(path, degrees)
    with av.open(str(path)) as c:       # ffmpeg itself reads the matrix we wrote
        assert (next(c.decode(c.streams.video[0])).rotation + degrees) % 360 == 0
    info, frames = frames_of(path)
    assert info.rotation == degrees and info.size == shape and info.original_size == shape
    assert len(frames) == 4
    for f in frames:
        assert f.rgb.shape == shape + (3,) and f.rgb.flags["C_CONTIGUOUS"]
        assert _bright_corner(f.rgb) == corner
    assert (degrees == 0) != any("rotated" in n for n in info.notes)


def test_rotated_video_downscale_keeps_the_upright_long_side(tmp_path):
    path = write_video(tmp_path / "rot.mp4", 2, w=128, h=64)
    set_mp4_rotation(path, 90)
    info, frames = frames_of(path, size=64)
    assert info.original_size == (128, 64) and info.size == (64, 32) and info.scale == 0.5
    assert frames[0].rgb.shape == (64, 32, 3) and _bright_corner(frames[0].rgb) == "top-right"


@pytest.mark.parametrize("ext, codec", [("mkv", "libx264"), ("webm", "libvpx-vp9"),
                                        ("mov", "libx264"), ("avi", "mpeg4")])
def test_other_containers_decode_and_count_frames(tmp_path, ext, codec):
    # mkv / webm store no frame count: it comes from demuxing the packets
    if codec not in av.codecs_available:
        pytest.skip(f"this PyAV build has no {codec}")
    path = tmp_path / f"v.{ext}"
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=10)
        s.width, s.height, s.pix_fmt = 64, 32, "yuv420p"
        for i in range(7):
            a = np.full((32, 64, 3), i * 30, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    info, frames = frames_of(path, max_frames=3)
    assert info.frame_count == 7 and info.fps == pytest.approx(10 / 3)
    assert [f.index for f in frames] == [0, 3, 6]
    assert [f.time for f in frames] == pytest.approx([0.0, 0.3, 0.6])
    assert [round(float(f.rgb.mean()) / 30) for f in frames] == [0, 3, 6]


def test_truncated_real_video_is_an_input_error(tmp_path):
    data = VIDEO.read_bytes()
    bad = tmp_path / "cut.mp4"
    bad.write_bytes(data[: len(data) * 6 // 10])    # the index (moov) is at the end: lost
    with pytest.raises(InputError) as e:
        open_input(bad, PrepareOptions())
    assert str(bad) in str(e.value)


def test_video_truncated_after_its_index_decodes_what_is_there(tmp_path):
    path = write_video(tmp_path / "fs.mp4", 30, options={"movflags": "faststart"},
                       noise=True)
    data = path.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 7 // 10])
    info, frames = frames_of(cut)
    assert info.frame_count == 30 and 0 < len(frames) < 30
    assert any(f"only {len(frames)} of 30" in n for n in info.notes)


def test_video_with_no_decodable_frames_is_an_input_error(tmp_path):
    path = write_video(tmp_path / "v.mp4", 8, options={"movflags": "faststart"})
    d = bytearray(path.read_bytes())
    m = d.find(b"mdat")
    d[m + 4:] = bytes(len(d) - m - 4)              # index intact, every frame zeroed
    path.write_bytes(bytes(d))
    with pytest.raises(InputError) as e:
        open_input(path, PrepareOptions())
    assert "decodable" in e.value.message and e.value.file == str(path)


def test_text_file_named_mp4_is_an_input_error(tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n" * 50)
    with pytest.raises(InputError) as e:
        open_input(fake, PrepareOptions())
    assert e.value.file == str(fake) and "video" in e.value.message


def test_video_frame_size_is_bounded_before_decoding(tmp_path):
    path = write_video(tmp_path / "v.mp4", 2)
    with pytest.raises(InputError) as e:
        open_input(path, PrepareOptions(), DecodeOptions(max_input_pixels=64 * 32 - 1))
    assert "pixels" in e.value.message and e.value.file == str(path)


# -- images --------------------------------------------------------------------------------------

def test_real_rgba_photo_gives_rgb_and_an_alpha_hint():
    info, frames = frames_of(RYOTA)
    src = np.asarray(Image.open(RYOTA))
    assert info.kind == "image" and info.size == (512, 512) and info.scale == 1.0
    assert info.frame_count == 1 and len(frames) == 1
    f = frames[0]
    assert f.index == 0 and f.time == 0.0 and f.name == "ryota.png"
    assert f.rgb.shape == (512, 512, 3) and f.rgb.dtype == np.uint8
    np.testing.assert_array_equal(f.rgb, src[..., :3])
    assert f.alpha is not None and f.alpha.dtype == np.uint8
    np.testing.assert_array_equal(f.alpha, src[..., 3])
    assert any("alpha" in n and "person-mask hint" in n for n in info.notes)


def test_real_photo_downscaled_with_its_alpha():
    info, frames = frames_of(RYOTA, size=256)
    assert info.size == (256, 256) and info.scale == 0.5
    assert frames[0].rgb.shape == (256, 256, 3) and frames[0].alpha.shape == (256, 256)


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def test_grayscale_becomes_rgb_with_a_note(tmp_path):
    g = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (16, 1))
    info, frames = frames_of(_save(Image.fromarray(g), tmp_path / "g.png"))
    rgb = frames[0].rgb
    assert rgb.shape == (16, 64, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], g)
    assert any("grayscale" in n and "(L)" in n for n in info.notes)


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path):
    g = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (8, 1))
    path = _save(Image.fromarray(g), tmp_path / "g16.png")
    assert Image.open(path).mode.startswith("I;16")
    info, frames = frames_of(path)
    got = frames[0].rgb[..., 0].astype(int)
    np.testing.assert_array_equal(got, np.rint(g / 257.0).astype(int))
    assert got.min() == 0 and got.max() == 255 and len(np.unique(got)) > 60
    assert any("16-bit grayscale" in n and "scaled" in n for n in info.notes)


def write_png16_rgb(path: Path, rgb16: np.ndarray) -> Path:
    """A 16-bit-per-channel RGB PNG (PIL cannot write one)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb16)
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def test_16bit_rgb_keeps_the_high_byte_with_a_note(tmp_path):
    rgb16 = np.zeros((8, 32, 3), np.uint16)
    rgb16[..., 0] = 65535
    rgb16[..., 1] = np.linspace(0, 65535, 32).astype(np.uint16)[None]
    rgb16[..., 2] = 0x8040
    info, frames = frames_of(write_png16_rgb(tmp_path / "c16.png", rgb16))
    np.testing.assert_array_equal(frames[0].rgb, (rgb16 >> 8).astype(np.uint8))
    assert any("16-bit RGB" in n for n in info.notes)


def test_cmyk_jpeg_becomes_rgb_with_a_note(tmp_path):
    cmyk = Image.new("CMYK", (32, 16), (0, 255, 255, 0))          # pure red in CMYK
    path = _save(cmyk, tmp_path / "c.jpg", quality=95)
    assert Image.open(path).mode == "CMYK"
    info, frames = frames_of(path)
    px = frames[0].rgb.reshape(-1, 3).mean(0)
    assert px[0] > 240 and px[1] < 15 and px[2] < 15
    assert any("CMYK" in n for n in info.notes)


def test_palette_and_grey_alpha_give_alpha_hints(tmp_path):
    p = Image.new("P", (16, 16), 0)
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    p.paste(1, (0, 0, 8, 16))
    info, frames = frames_of(_save(p, tmp_path / "p.png", transparency=0))
    assert frames[0].alpha[:, :8].min() == 255 and frames[0].alpha[:, 8:].max() == 0
    assert frames[0].rgb[0, 0].tolist() == [0, 255, 0]
    la = Image.fromarray(np.dstack([np.full((8, 8), 90, np.uint8),
                                    np.eye(8, dtype=np.uint8) * 255]))
    info, frames = frames_of(_save(la, tmp_path / "la.png"))
    np.testing.assert_array_equal(frames[0].alpha, np.eye(8, dtype=np.uint8) * 255)
    assert (frames[0].rgb == 90).all()
    assert any("(LA)" in n for n in info.notes)


def test_fully_opaque_alpha_is_no_hint(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (10, 20, 30, 255))
    info, frames = frames_of(_save(rgba, tmp_path / "o.png"))
    assert frames[0].alpha is None and any("opaque" in n for n in info.notes)


def _marked(w: int, h: int) -> Image.Image:
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 3, : w // 3] = 255
    return Image.fromarray(a)


def _exif(**ifd) -> Image.Exif:
    exif = Image.Exif()
    sub = exif.get_ifd(0x8769)
    for tag, value in ifd.items():
        sub[int(tag[1:], 16)] = value
    return exif


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6                                   # show turned 90 degrees clockwise
    path = _save(_marked(60, 30), tmp_path / "o.jpg", exif=exif, quality=95)
    info, frames = frames_of(path)
    assert info.original_size == (60, 30) and frames[0].rgb.shape == (60, 30, 3)
    assert _bright_corner(frames[0].rgb) == "top-right"


def test_exif_35mm_focal_in_output_pixels(tmp_path):
    path = _save(_marked(400, 300), tmp_path / "f.jpg", exif=_exif(xA405=26))
    info, _ = frames_of(path)
    assert info.focal_px == pytest.approx(26 / 36 * 400)
    info, _ = frames_of(path, size=200)
    assert info.focal_px == pytest.approx(26 / 36 * 200)
    assert any("FocalLengthIn35mmFilm" in n for n in info.notes)


def test_exif_focal_length_and_focal_plane_resolution(tmp_path):
    # 5 mm lens, 1000 px per cm on the sensor: 500 px; the file is half the width the camera wrote
    exif = _exif(x920A=5.0, xA20E=1000.0, xA210=3, xA002=800)
    path = _save(_marked(400, 300), tmp_path / "f.jpg", exif=exif)
    info, _ = frames_of(path)
    assert info.focal_px == pytest.approx(250.0)
    info, _ = frames_of(path, size=100)
    assert info.focal_px == pytest.approx(62.5)


def test_no_exif_no_focal(tmp_path):
    info, _ = frames_of(_save(_marked(40, 30), tmp_path / "f.png"))
    assert info.focal_px is None


def test_large_image_is_downscaled_never_upscaled(tmp_path):
    path = _save(_marked(2000, 1000), tmp_path / "big.png")
    info, frames = frames_of(path)
    assert info.size == (512, 1024) and frames[0].rgb.shape == (512, 1024, 3)
    assert info.original_size == (1000, 2000) and info.scale == pytest.approx(0.512)
    info, frames = frames_of(tmp_path / "big.png", size=4096)
    assert info.size == (1000, 2000) and any("not upscaled" in n for n in info.notes)


def png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG whose header claims w x h pixels and holds no pixel data."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + crc)
    return path


@pytest.mark.parametrize("w, h", [(20000, 20000), (12000, 10000)])
def test_huge_image_header_is_refused_unread(tmp_path, w, h):
    # 400 Mpx trips PIL's own bomb guard; 120 Mpx only PIL's warning, then our bound
    path = png_header_only(tmp_path / "huge.png", w, h)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(InputError) as e:
            open_input(path, PrepareOptions())
    assert e.value.file == str(path)


@pytest.mark.parametrize("suffix, cut", [(".png", 0.5), (".jpg", 0.3)])
def test_truncated_image_is_an_input_error_naming_it(tmp_path, suffix, cut):
    rng = np.random.default_rng(0)
    good = tmp_path / f"good{suffix}"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    bad = tmp_path / f"bad{suffix}"
    data = good.read_bytes()
    bad.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(InputError) as e:
        _, it = open_input(bad, PrepareOptions())
        list(it)
    assert e.value.file == str(bad)


def test_not_an_image_and_unknown_and_missing(tmp_path):
    fake = tmp_path / "x.png"
    fake.write_text("hello")
    with pytest.raises(InputError) as e:
        open_input(fake, PrepareOptions())
    assert e.value.file == str(fake)
    other = tmp_path / "x.txt"
    other.write_text("hello")
    with pytest.raises(InputError) as e:
        open_input(other, PrepareOptions())
    assert "unknown type" in e.value.message
    with pytest.raises(InputError) as e:
        open_input(tmp_path / "nope.mp4", PrepareOptions())
    assert "does not exist" in e.value.message


# -- image folders -------------------------------------------------------------------------------

def test_folder_natural_order_ignores_other_files(tmp_path):
    for i in (10, 2, 1):
        _save(Image.new("RGB", (32, 24), (i * 20, 0, 0)), tmp_path / f"f{i}.png")
    (tmp_path / "readme.txt").write_text("x")
    (tmp_path / "._f3.png").write_bytes(b"\0\5\26\7")            # macOS metadata, not an image
    (tmp_path / "sub").mkdir()
    info, frames = frames_of(tmp_path)
    assert info.kind == "images" and info.frame_count == 3 and info.fps == 25.0
    assert [f.name for f in frames] == ["f1.png", "f2.png", "f10.png"]
    assert [f.index for f in frames] == [0, 1, 2]
    assert [int(f.rgb[0, 0, 0]) for f in frames] == [20, 40, 200]
    assert frames[2].time == pytest.approx(2 / 25)
    assert any("ignored 1" in n for n in info.notes)
    _, frames = frames_of(tmp_path, every=2)
    assert [f.name for f in frames] == ["f1.png", "f10.png"]


def test_folder_same_aspect_sizes_resized_to_the_first(tmp_path):
    _save(_marked(64, 48), tmp_path / "a1.png")
    _save(_marked(128, 96), tmp_path / "a2.png")
    _save(_marked(201, 150), tmp_path / "a3.png")                # 0.5 % off: within 1 %
    info, frames = frames_of(tmp_path)
    assert info.size == (48, 64) and all(f.rgb.shape == (48, 64, 3) for f in frames)
    assert any("2 image(s) of another size resized" in n for n in info.notes)


def test_folder_other_aspect_is_refused_naming_the_file_and_sizes(tmp_path):
    _save(_marked(64, 48), tmp_path / "a1.png")
    _save(_marked(64, 48), tmp_path / "a2.png")
    _save(_marked(64, 64), tmp_path / "a3.png")
    with pytest.raises(InputError) as e:
        open_input(tmp_path, PrepareOptions())
    assert e.value.file == str(tmp_path / "a3.png")
    assert "64x64" in e.value.message and "64x48" in e.value.message and "a1.png" in e.value.message


def test_empty_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError) as e:
        open_input(tmp_path, PrepareOptions())
    assert e.value.file == str(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError):
        open_input(tmp_path, PrepareOptions())


def test_folder_mixed_modes_each_noted(tmp_path):
    _save(Image.new("RGB", (16, 16), (1, 2, 3)), tmp_path / "1.png")
    _save(Image.new("L", (16, 16), 7), tmp_path / "2.png")
    _save(Image.new("L", (16, 16), 9), tmp_path / "3.png")
    _save(Image.new("CMYK", (16, 16), (0, 0, 0, 0)), tmp_path / "4.jpg")
    info, frames = frames_of(tmp_path)
    assert all(f.rgb.shape == (16, 16, 3) for f in frames)
    assert any("grayscale" in n and "2 image(s) (first 2.png)" in n for n in info.notes)
    assert any("CMYK" in n and "1 image(s) (first 4.jpg)" in n for n in info.notes)


def test_load_image_is_the_same_decoder(tmp_path):
    rgb, alpha = load_image(RYOTA)
    assert rgb.mode == "RGB" and alpha is not None and alpha.mode == "L"
    assert math.isclose(np.asarray(alpha).mean(), np.asarray(Image.open(RYOTA))[..., 3].mean())

"""The input decoder of `pointwear prepare`: a video, an image folder or one image -> a stream of
upright 8-bit RGB frames (InputFrame) plus what is known about the input as a whole (InputInfo).

Public API::

    parse_time(text, fps, field) -> int | None          "--start" / "--end" text -> frame number
    select_frames(n, start, end, every, max_frames, file) -> list[int]
    open_input(path, options, tuning=None) -> (InputInfo, Iterator[InputFrame])

Every input is bounded before it is expanded: an image whose header says more than
MAX_INPUT_PIXELS pixels is refused unread (and PIL's own decompression-bomb guard is turned into
the same error), a video whose stream says its frames are larger is refused before a frame is
decoded, and at most MAX_FRAMES_LIMIT frames are ever selected. Frames stream: the iterator holds
one decoded frame at a time, never the whole video.

Video rotation: phones store portrait video as landscape pixels plus a display matrix (the MP4
`tkhd` matrix, exported by ffmpeg as DISPLAYMATRIX side data on every decoded frame; older
files' `rotate` tag is read too). PyAV's `frame.rotation` is ffmpeg's
`av_display_rotation_get`: the counter-clockwise angle of the matrix, so the picture is shown
turned `-rotation` degrees clockwise, as ffmpeg's own autorotate does (`rotation == -90` ->
`transpose=clock`). We do the same with np.rot90 after scaling; InputInfo.rotation holds the
clockwise degrees applied (0 / 90 / 180 / 270). A mirrored display matrix (negative determinant,
rare: some front-camera clips) is reported in the notes but not un-mirrored.
"""
from __future__ import annotations

import math
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError
from .options import (DEFAULT_MAX_SIZE, FULL_FRAME_LONG_SIDE_MM, MAX_FRAMES_LIMIT,  # noqa: F401
                      DecodeOptions, PrepareOptions, parse_time)  # DecodeOptions, parse_time: re-exported
from .types import InputFrame, InputInfo

VIDEO_EXTS = (".mp4", ".mov", ".avi", ".webm", ".mkv", ".m4v")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

# EXIF tags (the Exif sub-IFD 0x8769 holds the camera ones).
_EXIF_IFD = 0x8769
_TAG_ORIENTATION = 0x0112
_TAG_FOCAL_LENGTH = 0x920A              # mm, rational
_TAG_FOCAL_35MM = 0xA405                # mm, integer, 0 = unknown
_TAG_FOCAL_PLANE_XRES = 0xA20E          # pixels per unit along the image width, rational
_TAG_FOCAL_PLANE_UNIT = 0xA210          # 2 inch, 3 cm (4 mm, 5 um in some writers)
_TAG_PIXEL_X_DIMENSION = 0xA002         # the width the camera wrote (FocalPlaneXResolution's)
_FOCAL_PLANE_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}

# PIL decoders raise these on bad or truncated data (besides InputError, never caught here).
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error,
                 zlib.error, UnidentifiedImageError)


def select_frames(n: int, start: int | None, end: int | None, every: int,
                  max_frames: int | None, file: str | Path | None = None,
                  limit: int = MAX_FRAMES_LIMIT) -> list[int]:
    """The frame numbers kept of `n` frames: start <= i < end, every `every`-th, then at most
    `max_frames` of those spread evenly (first and last kept; nearest frames to a linspace).

    Raises InputError when nothing is left (start past the end, end <= start) or when more than
    `limit` frames would be kept (checked before any list is built: `n` may come from a header).
    """
    start = 0 if start is None else start
    stop = n if end is None else min(end, n)
    if end is not None and end <= start:
        raise InputError(f"must be after --start (frame {start}), got frame {end}",
                         file=file, field="--end")
    if start >= n:
        raise InputError(f"is frame {start} but the input has {n} frame(s) (0..{n - 1})",
                         file=file, field="--start")
    chosen = range(start, stop, every)
    if min(len(chosen), max_frames or len(chosen)) > limit:
        raise InputError(f"selects {len(chosen)} frames, more than the limit of {limit}",
                         file=file, field="--max-frames",
                         hint="use --every, --start/--end or --max-frames")
    if max_frames is not None and len(chosen) > max_frames:
        if max_frames == 1:
            return [chosen[0]]
        picks = np.rint(np.linspace(0, len(chosen) - 1, max_frames)).astype(np.int64)
        return [chosen[int(k)] for k in picks]
    return list(chosen)


# -- public entry --------------------------------------------------------------------------------

def open_input(path: str | Path, options: PrepareOptions, tuning: DecodeOptions | None = None
               ) -> tuple[InputInfo, Iterator[InputFrame]]:
    """Open a video file, an image folder or one image; returns its InputInfo and a lazy iterator
    of the selected frames, upright, 8-bit RGB, resized to InputInfo.size.

    Selection: options.start / end (exclusive; parse_time), every, max_frames (evenly spread).
    Size: the long side is brought down to options.size (default DEFAULT_MAX_SIZE); frames are
    never upscaled. Image folders: files with an image extension, hidden files skipped, in natural
    name order ("f2" before "f10"); other files are ignored (noted). Mixed sizes in a folder:
    every image is resized to the first selected image's size when the aspect ratios agree within
    `tuning.aspect_tolerance` (1 %), else InputError naming the first mismatching file and both
    sizes - stretching a different framing would bend the person, which the body fit cannot undo.
    Image modes other than RGB / RGBA are converted (noted); an alpha channel that is not fully
    opaque becomes InputFrame.alpha (a person-mask hint). EXIF orientation is applied and the
    EXIF focal length becomes InputInfo.focal_px (in output pixels).

    Headers are checked here (unreadable files, sizes, bounds); pixel data is decoded by the
    iterator, which raises InputError naming the file for a truncated image, and at the end of a
    video appends a note when fewer frames decoded than the container promised.
    """
    tuning = tuning or DecodeOptions()
    _check_options(options, tuning)
    p = Path(path).expanduser().absolute()
    if not p.exists():
        raise InputError("does not exist", file=p, hint="give a video file, an image folder or "
                                                         "one image")
    if p.is_dir():
        files, ignored = _list_images(p)
        if not files:
            raise InputError("has no images", file=p,
                             hint=f"put {'/'.join(e[1:] for e in IMAGE_EXTS)} files in it")
        notes = [f"ignored {ignored} file(s) that are not images"] if ignored else []
        return _open_images(p, files, "images", options, tuning, notes)
    ext = p.suffix.lower()
    if ext in VIDEO_EXTS:
        return _open_video(p, options, tuning)
    if ext in IMAGE_EXTS:
        return _open_images(p, [p], "image", options, tuning, [])
    raise InputError(f"has an unknown type {ext or '(no extension)'!r}", file=p,
                     hint=f"videos: {' '.join(VIDEO_EXTS)}; images: {' '.join(IMAGE_EXTS)}; "
                          "or a folder of images")


def _check_options(options: PrepareOptions, tuning: DecodeOptions) -> None:
    def whole(v) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)
    if not whole(options.every) or options.every < 1:
        raise InputError(f"must be a whole number >= 1, got {options.every!r}", field="--every")
    if options.max_frames is not None and (not whole(options.max_frames)
                                           or not 1 <= options.max_frames <= tuning.max_selected):
        raise InputError(f"must be a whole number from 1 to {tuning.max_selected}, "
                         f"got {options.max_frames!r}", field="--max-frames")
    if options.size is not None and (not whole(options.size)
                                     or not tuning.min_size <= options.size <= tuning.max_size):
        raise InputError(f"must be a whole number of pixels from {tuning.min_size} to "
                         f"{tuning.max_size}, got {options.size!r}", field="--size")


def _select(n: int, fps: float, options: PrepareOptions, tuning: DecodeOptions, file: Path
            ) -> list[int]:
    start = parse_time(options.start, fps, "--start", tuning)
    end = parse_time(options.end, fps, "--end", tuning)
    return select_frames(n, start, end, options.every, options.max_frames, file,
                         tuning.max_selected)


def _kept_fps(fps: float, picks: Sequence[int]) -> float:
    """Mean frame rate of the kept frames: fps / every, or the spread step with --max-frames."""
    if len(picks) < 2:
        return fps
    return fps * (len(picks) - 1) / (picks[-1] - picks[0])


def _output_size(h: int, w: int, size: int | None, notes: list[str]
                 ) -> tuple[tuple[int, int], float]:
    """(H, W) of the frames after the --size rule, and the scale factor; never upscales."""
    target = DEFAULT_MAX_SIZE if size is None else size
    long_side = max(h, w)
    if long_side <= target:
        if size is not None and long_side < size:
            notes.append(f"--size {size} is larger than the input's long side {long_side}: "
                         "not upscaled")
        return (h, w), 1.0
    scale = target / long_side
    out = (max(1, round(h * scale)), max(1, round(w * scale)))
    notes.append(f"downscaled from {w}x{h} to {out[1]}x{out[0]} (long side {target})")
    return out, scale


# -- video ---------------------------------------------------------------------------------------

def _open_video(p: Path, options: PrepareOptions, tuning: DecodeOptions
                ) -> tuple[InputInfo, Iterator[InputFrame]]:
    import av
    try:
        container = av.open(str(p), mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"cannot be read as a video ({_short(exc)})", file=p,
                         hint="is the file complete? re-export it as mp4 (H.264)") from None
    try:
        info, frames = _probe_video(container, p, options, tuning)
    except BaseException:
        container.close()
        raise
    return info, frames


def _probe_video(container, p: Path, options: PrepareOptions, tuning: DecodeOptions
                 ) -> tuple[InputInfo, Iterator[InputFrame]]:
    if not container.streams.video:
        raise InputError("has no video stream", file=p)
    stream = container.streams.video[0]
    sw, sh = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
    if sw <= 0 or sh <= 0:
        raise InputError(f"has a video stream without a frame size ({sw}x{sh})", file=p,
                         hint="the file is damaged or its codec is not supported")
    if sw * sh > tuning.max_input_pixels:
        raise InputError(f"has {sw}x{sh} frames, more than {tuning.max_input_pixels} pixels",
                         file=p, hint="downscale the video first")
    notes: list[str] = []
    fps = _stream_fps(stream, tuning, notes)
    count = int(stream.frames or 0)
    if count <= 0:
        count = _count_packets(p, stream.index)
    if count <= 0:
        raise InputError("has no video frames", file=p)
    picks = _select(count, fps, options, tuning, p)

    stream.thread_type = "AUTO"
    decoded = _decode(container, stream, p)
    first = next(decoded, None)
    if first is None:
        raise InputError("has no decodable video frames", file=p,
                         hint="the file is damaged or its codec is not supported")
    rotation, mirrored, rot_note = _display_rotation(first[1], stream)
    if rot_note:
        notes.append(rot_note)
    if mirrored:
        notes.append("the display matrix also mirrors the picture: not un-mirrored")
    fw, fh = first[1].width, first[1].height
    original = (fw, fh) if rotation in (90, 270) else (fh, fw)        # (H, W) upright
    if rotation:
        notes.append(f"rotated {rotation} degrees clockwise (display matrix)")
    size, scale = _output_size(original[0], original[1], options.size, notes)
    info = InputInfo(source=str(p), kind="video", fps=_kept_fps(fps, picks), size=size,
                     original_size=original, scale=scale, rotation=rotation, focal_px=None,
                     frame_count=count, selected=len(picks), notes=notes)
    return info, _video_frames(container, stream, decoded, first, picks, info, fps, tuning)


def _stream_fps(stream, tuning: DecodeOptions, notes: list[str]) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and 0 < float(rate) < 10_000:
            return float(rate)
    if stream.frames and stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
        if seconds > 0:
            return stream.frames / seconds
    notes.append(f"the video states no frame rate: assumed {tuning.fallback_fps:g} fps")
    return tuning.fallback_fps


def _count_packets(p: Path, index: int) -> int:
    """Frames of a container that does not store its count: its video packets, demuxed only."""
    import av
    n = 0
    try:
        with av.open(str(p), mode="r", metadata_errors="ignore") as c:
            for packet in c.demux(c.streams.video[index]):
                n += packet.size > 0
    except av.error.FFmpegError:
        pass
    return n


def _decode(container, stream, p: Path):
    """(frame number, av.VideoFrame) in display order; a packet that fails to decode is skipped
    (ffmpeg conceals or drops it), a read error ends the stream."""
    import av
    i = 0
    try:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                continue
            for frame in frames:
                yield i, frame
                i += 1
    except av.error.FFmpegError:
        return


def _display_rotation(frame, stream) -> tuple[int, bool, str]:
    """(clockwise degrees to show the frame upright, mirrored?, note) from the frame's display
    matrix side data, else the stream's legacy `rotate` tag."""
    matrix = None
    for side in getattr(frame, "side_data", ()) or ():
        if "DISPLAYMATRIX" in str(getattr(side, "type", "")):
            raw = bytes(side)
            if len(raw) >= 36:
                matrix = struct.unpack("<9i", raw[:36])
    if matrix is not None:
        a, b, c, d = (v / 65536.0 for v in (matrix[0], matrix[1], matrix[3], matrix[4]))
        ccw = getattr(frame, "rotation", None)
        if ccw is None:   # av_display_rotation_get: atan2(b, a) of the normalised matrix
            ccw = -math.degrees(math.atan2(b, a))
        clockwise, mirrored = float(-ccw), a * d - b * c < 0
    else:
        tag = (stream.metadata or {}).get("rotate")
        try:
            clockwise, mirrored = float(tag or 0), False
        except ValueError:
            clockwise, mirrored = 0.0, False
    snapped = int(round(clockwise / 90.0)) * 90 % 360
    note = ""
    if abs(((clockwise - snapped + 180) % 360) - 180) > 1:
        note = f"display rotation {clockwise:.1f} degrees rounded to {snapped}"
    return snapped, mirrored, note


def _video_frames(container, stream, decoded, first, picks: list[int], info: InputInfo,
                  fps: float, tuning: DecodeOptions) -> Iterator[InputFrame]:
    p = Path(info.source)
    wanted = set(picks)
    last = picks[-1]
    h, w = info.size
    # swscale target in stored orientation; rot90 afterwards
    tw, th = (h, w) if info.rotation in (90, 270) else (w, h)
    k = {0: 0, 90: -1, 180: 2, 270: 1}[info.rotation]
    origin = stream.start_time
    yielded = 0
    odd_size = False
    try:
        stream_frames = _chain(first, decoded)
        for i, frame in stream_frames:
            if i > last:
                break
            if i not in wanted:
                continue
            if frame.width * frame.height > tuning.max_input_pixels:
                raise InputError(f"frame {i} is {frame.width}x{frame.height}, more than "
                                 f"{tuning.max_input_pixels} pixels", file=p)
            if (frame.width, frame.height) != (first[1].width, first[1].height) and not odd_size:
                odd_size = True
                info.notes.append(f"frame {i} changes the frame size to "
                                  f"{frame.width}x{frame.height}: resized to the first frame's")
            rgb = frame.to_ndarray(format="rgb24", width=tw, height=th, interpolation="AREA")
            if k:
                rgb = np.ascontiguousarray(np.rot90(rgb, k))
            yield InputFrame(index=i, time=_frame_time(frame, origin, i, fps), name=f"frame {i}",
                             rgb=rgb)
            yielded += 1
    finally:
        container.close()
    if yielded == 0:
        raise InputError(f"none of the selected frames (from frame {picks[0]}) could be decoded",
                         file=p, hint="the file may be truncated; check --start")
    if yielded < len(picks):
        info.notes.append(f"only {yielded} of {len(picks)} selected frames could be decoded "
                          "(the file may be truncated)")


def _chain(first, rest):
    yield first
    yield from rest


def _frame_time(frame, origin, i: int, fps: float) -> float:
    """Seconds from the start of the stream, from the frame's pts (i / fps without one)."""
    if frame.pts is None or frame.time_base is None:
        return i / fps
    t0 = origin if origin is not None else 0
    return float((frame.pts - t0) * frame.time_base)


# -- images --------------------------------------------------------------------------------------

def _natural_key(path: Path) -> tuple:
    """"f2.png" before "f10.png": digit runs compare as numbers, the rest case-insensitively."""
    parts = re.split(r"([0-9]+)", path.name)
    key = tuple((0, int(s), s) if i % 2 else (1, s.lower(), s)   # odd parts: the digit runs
                for i, s in enumerate(parts) if s)
    return key, path.name


def _list_images(folder: Path) -> tuple[list[Path], int]:
    """Image files of a folder in natural order, and how many other files were ignored."""
    files, ignored = [], 0
    for entry in folder.iterdir():
        if not entry.is_file() or entry.name.startswith("."):   # ._x.jpg: macOS metadata
            continue
        if entry.suffix.lower() in IMAGE_EXTS:
            files.append(entry)
        else:
            ignored += 1
    return sorted(files, key=_natural_key), ignored


@dataclass
class _Header:
    size: tuple[int, int]     # (H, W) upright (EXIF orientation applied)
    stored_w: int             # width as stored (the sensor's x axis)
    mode: str
    sixteen_bit: bool
    focal: tuple[float | None, str]   # (focal in px of the stored image, how it was found)


def _open_image(f: Path, tuning: DecodeOptions) -> Image.Image:
    """Image.open with the pixel bound checked from the header (nothing decoded yet)."""
    try:
        im = Image.open(f)
    except Image.DecompressionBombError as exc:
        raise InputError(f"is too large to decode safely ({_short(exc)})", file=f,
                         hint="downscale the image first") from None
    except FileNotFoundError:
        raise InputError("does not exist", file=f) from None
    except _IMAGE_ERRORS as exc:
        raise InputError(f"cannot be read as an image ({_short(exc)})", file=f) from None
    w, h = im.size
    if w <= 0 or h <= 0 or w * h > tuning.max_input_pixels:
        im.close()
        raise InputError(f"is {w}x{h}, more than {tuning.max_input_pixels} pixels", file=f,
                         hint="downscale the image first")
    return im


def _read_header(f: Path, tuning: DecodeOptions, want_focal: bool) -> _Header:
    with _open_image(f, tuning) as im:
        w, h = im.size
        tile = im.tile[0] if getattr(im, "tile", None) else None
        sixteen = ";16" in str(getattr(tile, "args", "")) if tile is not None else False
        try:
            # PNG keeps EXIF after the pixels at times; PIL would decode them all to find it, so
            # a PNG's header pass reads only an eXIf chunk met before the pixel data
            lazy_png = im.format == "PNG" and "exif" not in im.info
            exif = Image.Exif() if lazy_png else im.getexif()
            orientation = int(exif.get(_TAG_ORIENTATION, 1) or 1)
            focal = _exif_focal(exif, w) if want_focal else (None, "")
        except _IMAGE_ERRORS:
            orientation, focal = 1, (None, "")
        upright = (w, h) if orientation in (5, 6, 7, 8) else (h, w)
        return _Header(size=upright, stored_w=w, mode=im.mode, sixteen_bit=sixteen, focal=focal)


def _exif_focal(exif, stored_w: int) -> tuple[float | None, str]:
    """Focal length in px of the stored image from EXIF, or (None, "") -> (px, source note).

    FocalLengthIn35mmFilm gives focal / 36 mm of the long side (the 35 mm frame's long side, as
    options.DEFAULT_FOCAL_35MM does) and is returned as a fraction of the long side, marked by
    source "35mm"; FocalLength + FocalPlaneXResolution give px directly (scaled when the file is
    narrower than the PixelXDimension the camera wrote).
    """
    sub = exif.get_ifd(_EXIF_IFD)
    f35 = sub.get(_TAG_FOCAL_35MM)
    try:
        if f35 is not None and float(f35) > 0:
            return float(f35) / FULL_FRAME_LONG_SIDE_MM, f"35mm:{float(f35):g}"
        focal, xres = sub.get(_TAG_FOCAL_LENGTH), sub.get(_TAG_FOCAL_PLANE_XRES)
        unit_mm = _FOCAL_PLANE_UNIT_MM.get(int(sub.get(_TAG_FOCAL_PLANE_UNIT, 2) or 2))
        if focal is None or xres is None or unit_mm is None:
            return None, ""
        focal, xres = float(focal), float(xres)
        if not (math.isfinite(focal) and math.isfinite(xres) and focal > 0 and xres > 0):
            return None, ""
        px = focal * xres / unit_mm
        written_w = sub.get(_TAG_PIXEL_X_DIMENSION)
        if written_w and int(written_w) > 0:
            px *= stored_w / int(written_w)
        return px, f"plane:{focal:g}"
    except (TypeError, ValueError, ZeroDivisionError):
        return None, ""


def _focal_px(header: _Header, out_size: tuple[int, int], scale: float, tuning: DecodeOptions,
              notes: list[str], name: str) -> float | None:
    value, source = header.focal
    if value is None:
        return None
    long_out = max(out_size)
    if source.startswith("35mm:"):
        px = value * long_out
        how = f"FocalLengthIn35mmFilm {source[5:]} mm"
    else:
        px = value * scale
        how = f"FocalLength {source[6:]} mm and the focal-plane resolution"
    lo, hi = tuning.focal_range
    if not lo * long_out <= px <= hi * long_out:
        notes.append(f"EXIF focal of {name} ({how}) gives {px:.0f} px: implausible, ignored")
        return None
    notes.append(f"focal {px:.1f} px from EXIF {how} of {name}")
    return px


def _open_images(p: Path, files: list[Path], kind: str, options: PrepareOptions,
                 tuning: DecodeOptions, notes: list[str]) -> tuple[InputInfo, Iterator[InputFrame]]:
    fps = tuning.image_fps
    picks = _select(len(files), fps, options, tuning, p)
    chosen = [files[i] for i in picks]
    headers = [_read_header(f, tuning, want_focal=(j == 0)) for j, f in enumerate(chosen)]
    ref = headers[0].size
    resized = 0
    for f, hd in zip(chosen[1:], headers[1:]):
        if hd.size == ref:
            continue
        ratio = (hd.size[1] / hd.size[0]) / (ref[1] / ref[0])
        if abs(ratio - 1.0) > tuning.aspect_tolerance:
            raise InputError(
                f"is {hd.size[1]}x{hd.size[0]} but the first image {chosen[0].name} is "
                f"{ref[1]}x{ref[0]}: the aspect ratios differ by {abs(ratio - 1) * 100:.1f} % "
                f"(more than {tuning.aspect_tolerance * 100:g} %), so it cannot be resized to it",
                file=f, hint="crop the images to one aspect ratio")
        resized += 1
    if resized:
        notes.append(f"{resized} image(s) of another size resized to the first image's "
                     f"{ref[1]}x{ref[0]}")
    for text in _mode_notes(chosen, headers):
        notes.append(text)
    size, scale = _output_size(ref[0], ref[1], options.size, notes)
    focal = _focal_px(headers[0], size, scale, tuning, notes, chosen[0].name)
    info = InputInfo(source=str(p), kind=kind, fps=_kept_fps(fps, picks), size=size,
                     original_size=ref, scale=scale, rotation=0, focal_px=focal,
                     frame_count=len(files), selected=len(picks), notes=notes)
    return info, _image_frames(chosen, picks, info, fps, tuning)


# mode -> what the conversion note says (RGB and RGBA need no conversion)
_MODE_NAMES = {
    "1": "1-bit black-and-white", "L": "8-bit grayscale", "LA": "grayscale + alpha",
    "La": "grayscale + alpha", "P": "palette", "PA": "palette + alpha", "CMYK": "CMYK",
    "I;16": "16-bit grayscale", "I;16L": "16-bit grayscale", "I;16B": "16-bit grayscale",
    "I;16N": "16-bit grayscale", "I": "32-bit integer grayscale", "F": "32-bit float grayscale",
    "YCbCr": "YCbCr", "LAB": "Lab", "HSV": "HSV", "RGBX": "RGBX", "RGBa": "premultiplied RGBA",
}


def _mode_notes(files: Sequence[Path], headers: Sequence[_Header]) -> list[str]:
    """One note per kind of conversion: "... converted to 8-bit RGB: 3 image(s) (first a.png)"."""
    kinds: dict[str, list] = {}
    for f, hd in zip(files, headers):
        if hd.mode in ("RGB", "RGBA"):
            if not hd.sixteen_bit:
                continue
            label = f"16-bit {hd.mode} reduced to 8 bits per channel"
        else:
            label = f"{_MODE_NAMES.get(hd.mode, hd.mode)} ({hd.mode}) converted to 8-bit RGB"
            if hd.mode.startswith("I") or hd.mode == "F":
                label += " (scaled to 0..255)"
            if hd.mode == "CMYK":
                label += " by PIL (no colour profile applied)"
        kinds.setdefault(label, [f.name, 0])[1] += 1
    return [f"{label}: {n} image(s) (first {first})" for label, (first, n) in kinds.items()]


def _image_frames(files: list[Path], picks: list[int], info: InputInfo, fps: float,
                  tuning: DecodeOptions) -> Iterator[InputFrame]:
    h, w = info.size
    alpha_notes = {"opaque": 0, "kept": 0}
    for i, f in zip(picks, files):
        rgb, alpha = load_image(f, tuning)
        ratio = (rgb.size[0] / rgb.size[1]) / (w / h)
        if abs(ratio - 1.0) > tuning.aspect_tolerance:   # e.g. EXIF met only after the pixels
            raise InputError(f"decodes to {rgb.size[0]}x{rgb.size[1]}, not the aspect ratio of "
                             f"{w}x{h} its header and the first image gave", file=f,
                             hint="re-save the image with its orientation applied")
        if rgb.size != (w, h):
            rgb = rgb.resize((w, h), Image.Resampling.LANCZOS, reducing_gap=3.0)
            if alpha is not None:
                alpha = alpha.resize((w, h), Image.Resampling.BILINEAR)
        a = None
        if alpha is not None:
            a = np.asarray(alpha, dtype=np.uint8)
            if a.min() == 255:
                a = None
                if not alpha_notes["opaque"]:
                    info.notes.append(f"{f.name}: alpha channel is fully opaque: ignored")
                alpha_notes["opaque"] += 1
            elif not alpha_notes["kept"]:
                alpha_notes["kept"] += 1
                info.notes.append(f"{f.name}: alpha channel kept as a person-mask hint "
                                  f"({(a > 127).mean() * 100:.2f} % opaque)")
        yield InputFrame(index=i, time=i / fps, name=f.name,
                         rgb=np.asarray(rgb, dtype=np.uint8).copy(), alpha=a)


def load_image(f: Path, tuning: DecodeOptions | None = None
               ) -> tuple[Image.Image, Image.Image | None]:
    """One image file -> (8-bit RGB image, 8-bit alpha image or None), EXIF orientation applied.

    16-bit and 32-bit grayscale are scaled to 0..255 (PIL's own convert would clip them);
    CMYK, palette, YCbCr, ... go through PIL's convert. Raises InputError naming the file when it
    cannot be decoded (truncated, corrupt) or is over the pixel bound.
    """
    tuning = tuning or DecodeOptions()
    with _open_image(f, tuning) as im:
        try:
            im.load()
            im = ImageOps.exif_transpose(im)
            return _to_rgb(im)
        except _IMAGE_ERRORS as exc:
            raise InputError(f"cannot be decoded ({_short(exc)})", file=f,
                             hint="the file may be truncated or corrupt") from None


def _to_rgb(im: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """Any PIL mode -> (RGB, alpha or None)."""
    mode = im.mode
    if mode == "RGB":
        return im, None
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        return rgba.convert("RGB"), rgba.getchannel("A")
    if mode.startswith("I") or mode == "F":
        a = np.asarray(im)
        if mode.startswith("I;16"):
            a = a.astype(np.float64) / 257.0
        else:
            a = a.astype(np.float64)
            hi = float(a.max()) if a.size else 0.0
            if mode == "F" and hi <= 1.0:
                a = a * 255.0
            elif hi > 65535.0:
                a = a * (255.0 / hi)
            elif hi > 255.0:
                a = a / 257.0
        grey = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB"), None
    return im.convert("RGB"), None


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."

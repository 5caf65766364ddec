"""DICOM radiographs as scanners write them -> the 8-bit grayscale image the model reads.

The display pipeline of DICOM PS3.3 C.11, in order: the stored values through the modality LUT
(RescaleSlope/Intercept or a Modality LUT Sequence) to the modality's units; then the VOI
transform, a VOI LUT Sequence or the first window (WindowCenter/WindowWidth with its
VOILUTFunction), to display values, or, where the file has neither, the full range of the
modality values; then MONOCHROME1 (bright bones stored as low values) inverted. A 15-bit
computed radiograph thus looks as its scanner meant it to, not min-max stretched. Only what the
model can read passes: one frame, one gray channel; anything else is a `DicomError` (a
ValueError), one line naming the value and what to do. Needs `pydicom` (>= 3) and, for
compressed files, `pylibjpeg` with its OpenJPEG plugin (JPEG 2000) and `python-gdcm` (JPEG
Lossless, JPEG-LS), all permissively licensed: `pip install 'cxr_tf[dicom]'`.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

INSTALL = "pip install 'cxr_tf[dicom]'"
GRAY = ("MONOCHROME1", "MONOCHROME2")
DECODERS = (
    f"{INSTALL} decodes JPEG 2000, JPEG-LS, JPEG Lossless and 8-bit JPEG; 12-bit lossy JPEG "
    "needs pylibjpeg-libjpeg (GPL-3, not installed by cxr_tf): pip install pylibjpeg-libjpeg"
)
MAGIC_OFFSET, MAGIC = 128, b"DICM"  # PS3.10 7.1: a 128-byte preamble, then "DICM"


class DicomError(ValueError):
    """A DICOM file the model cannot read; the message (one line) says why and what to do."""


def is_dicom(path) -> bool:
    """Whether `path` starts like a DICOM file (PS3.10), whatever its name: PACS exports are
    often named by UID ("1.2.840.113619.2.55.3...") or "IM0001", with no `.dcm`."""
    try:
        with open(path, "rb") as f:
            return has_magic(f.read(MAGIC_OFFSET + len(MAGIC)))
    except OSError:
        return False


def has_magic(data: bytes) -> bool:
    """Whether the bytes of a file start like DICOM: "DICM" after the 128-byte preamble."""
    return data[MAGIC_OFFSET : MAGIC_OFFSET + len(MAGIC)] == MAGIC


def is_dicom_image(path) -> bool:
    """Whether `path` is DICOM by its header and, as far as its header says, an image: a folder
    search takes these and leaves out the DICOMDIR, reports and presentation states that PACS
    exports hold beside the images. Reads the header only, not the pixels; a header that does
    not parse counts as an image, so that `read` reports what is wrong with it."""
    if not is_dicom(path):
        return False
    try:
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return "Rows" in ds and "Columns" in ds
    except Exception:
        return True


def read(path) -> np.ndarray:
    """The radiograph in `path` as uint8 (H, W), after the modality and VOI transforms."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError as err:
        raise DicomError(f"reading DICOM needs pydicom 3: {INSTALL}") from err

    try:
        return _display(pydicom.dcmread(path if hasattr(path, "read") else Path(path)))
    except (DicomError, OSError):
        raise
    except InvalidDicomError as err:
        raise DicomError("not a DICOM file (no 'DICM' header)") from err
    except Exception as err:  # malformed elements, in reading or (parsed on first use) after
        raise DicomError(f"unreadable DICOM, damaged header: {_one_line(err)}") from err


def _display(ds) -> np.ndarray:
    """`read` after the file is opened: checks, then the transforms of PS3.3 C.11."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if "PixelData" not in ds:
        raise DicomError(
            "DICOM without pixel data: a report, presentation state or DICOMDIR rather than "
            "an image, or a damaged file"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DicomError(
            f"multi-frame DICOM ({frames} frames); save the frame to predict as a file of its own"
        )
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1 or photometric not in GRAY:
        raise DicomError(
            f"colour DICOM (PhotometricInterpretation {photometric}, {samples} samples per "
            "pixel); cxr_tf reads grayscale radiographs (MONOCHROME1 or MONOCHROME2)"
        )
    try:
        stored = ds.pixel_array
    except Exception as err:  # no decoder for the transfer syntax, or corrupt pixel data
        syntax = ds.file_meta.get("TransferSyntaxUID")
        if syntax is not None and syntax.is_compressed:
            raise DicomError(
                f"cannot decode the pixel data ({syntax.name}): {_one_line(err)}; {DECODERS}"
            ) from err
        raise DicomError(
            f"unreadable DICOM, damaged or incomplete pixel data: {_one_line(err)}"
        ) from err

    modality = apply_modality_lut(stored, ds)  # integers unless a rescale makes them float
    values = np.asarray(modality, np.float64)
    if "VOILUTSequence" in ds:
        lut = ds.VOILUTSequence[0]  # a lookup table indexed by the (integer) modality values
        shown = np.asarray(apply_voi_lut(modality, ds, index=0, prefer_lut=True), np.float64)
        bits = int(lut.LUTDescriptor[2])
        display = shown / (2.0**bits - 1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        display = window(
            values,
            _first(ds.WindowCenter),
            _first(ds.WindowWidth),
            str(ds.get("VOILUTFunction", "LINEAR")),
        )
    else:
        lo, hi = float(values.min()), float(values.max())
        display = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    display = np.clip(display, 0.0, 1.0)
    if photometric == "MONOCHROME1":
        display = 1.0 - display
    return np.round(display * 255.0).astype(np.uint8)


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR"):
    """DICOM PS3.3 C.11.2.1.2: modality values -> display values in [0, 1]."""
    function = function.strip().upper()
    if width <= 0:
        raise DicomError(f"window width {width} is not positive; the file's window is invalid")
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if width < 1:
        raise DicomError(f"window width {width} is below 1; the file's window is invalid")
    if width == 1:  # a threshold
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def to_png(path) -> bytes:
    """`read(path)` encoded as an 8-bit grayscale PNG, for the model's byte-level input."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(read(path)).save(buf, format="PNG")
    return buf.getvalue()


def _first(value) -> float:
    """The first of a possibly multi-valued attribute (several windows: the first is default)."""
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def _one_line(err: Exception) -> str:
    """An exception's message on one line (pydicom lists each decoder's reason on its own)."""
    lines = [line.strip().rstrip(":") for line in str(err).splitlines() if line.strip()]
    return "; ".join(lines) or type(err).__name__

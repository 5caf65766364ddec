"""cxr_tf.dicom on a real computed radiograph (pydicom-data's RG1: 15-bit MONOCHROME1 with a
window, uncompressed and JPEG 2000) and on generated files for the cases it does not cover."""

import io
import shutil

import numpy as np
import pydicom  # the dev extra installs pydicom, pydicom-data and the JPEG 2000 decoder
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxr_tf import dicom


@pytest.fixture(scope="module")
def rg1():
    """The uncompressed file, its path, and our reading of it."""
    path = get_testdata_file("RG1_UNCR.dcm")
    return pydicom.dcmread(path), path, dicom.read(path)


def test_real_cr_is_windowed_and_inverted(rg1):
    ds, _, image = rg1
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.BitsStored == 15
    assert image.shape == (1955, 1841) and image.dtype == np.uint8
    # The window (centre 15000, width 30000) by the standard's linear formula, then inverted,
    # recomputed here from the raw pixels: equal within rounding.
    raw = ds.pixel_array.astype(np.float64)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    expected = 255 * (1 - np.clip((raw - (c - 0.5)) / (w - 1) + 0.5, 0, 1))
    assert np.abs(image - expected).max() <= 1
    # pydicom's own VOI transform agrees (it scales the window to 15 bits)
    voi = pydicom.pixels.apply_voi_lut(raw, ds)
    assert np.abs(image - 255 * (1 - voi / (2**15 - 1))).max() <= 1
    # The window is not min-max: the darkest stored value does not map to white.
    assert image.min() > 0 or image.max() < 255
    # Inverted: the lungs (dark in a PA chest) are darker than the mediastinum between them.
    h, w_ = image.shape
    lungs = [
        image[h // 3 : h // 2, x - w_ // 12 : x + w_ // 12].mean() for x in (w_ // 4, 3 * w_ // 4)
    ]
    centre = image[h // 3 : h // 2, w_ // 2 - w_ // 20 : w_ // 2 + w_ // 20].mean()
    assert max(lungs) < centre, (lungs, centre)


def test_jpeg2000_encodings_read_like_the_uncompressed_file(rg1):
    _, _, image = rg1
    lossless = dicom.read(get_testdata_file("RG1_J2KR.dcm"))
    np.testing.assert_array_equal(lossless, image)
    lossy = dicom.read(get_testdata_file("RG1_J2KI.dcm"))
    diff = np.abs(lossy.astype(int) - image.astype(int))
    assert diff.mean() < 1.0 and np.percentile(diff, 99.9) <= 4, (diff.mean(), diff.max())


def test_to_png_is_the_same_image(rg1):
    _, path, image = rg1
    png = Image.open(io.BytesIO(dicom.to_png(path)))
    assert png.mode == "L"
    np.testing.assert_array_equal(np.asarray(png), image)


def _write(tmp_path, pixels, name="x.dcm", **attrs):
    """A minimal uncompressed DICOM file with `pixels` and the given attributes."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
    pixels = np.asarray(pixels)
    frames = attrs.pop("frames", 1)
    samples = pixels.shape[-1] if pixels.ndim == 3 + (frames > 1) else 1
    rows, cols = pixels.shape[-2 - (samples > 1) : pixels.ndim - (samples > 1)]
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.BitsAllocated = ds.BitsStored = 8 * pixels.dtype.itemsize
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes()
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def test_rescale_then_full_range_without_a_window(tmp_path):
    stored = np.array([[0, 100], [200, 1000]], np.uint16)
    # modality values -1000 .. 1000 (slope 2, intercept -1000); no window: their full range
    path = _write(tmp_path, stored, RescaleSlope=2, RescaleIntercept=-1000)
    np.testing.assert_array_equal(dicom.read(path), [[0, 26], [51, 255]])
    # with a window over the modality values (not the stored ones)
    path = _write(
        tmp_path,
        stored,
        "w.dcm",
        RescaleSlope=2,
        RescaleIntercept=-1000,
        WindowCenter=-800,
        WindowWidth=401,
    )
    np.testing.assert_array_equal(dicom.read(path), [[0, 128], [255, 255]])


def test_what_the_model_cannot_read_is_refused_with_the_reason(tmp_path):
    frames = _write(tmp_path, np.zeros((3, 4, 4), np.uint8), "f.dcm", frames=3)
    with pytest.raises(ValueError, match=r"multi-frame DICOM \(3 frames\)"):
        dicom.read(frames)
    colour = _write(tmp_path, np.zeros((4, 4, 3), np.uint8), "c.dcm")
    with pytest.raises(ValueError, match="colour DICOM .*RGB.*MONOCHROME1 or MONOCHROME2"):
        dicom.read(colour)
    (tmp_path / "fake.dcm").write_bytes(b"DICM")
    with pytest.raises(ValueError, match="not a DICOM file"):
        dicom.read(tmp_path / "fake.dcm")


def _lut(descriptor, data, **attrs):
    """A LUT item (modality or VOI LUT sequence) with 16-bit entries."""
    item = pydicom.Dataset()
    item.LUTDescriptor = descriptor
    item.add_new("LUTData", "US", data)  # US, one value per entry (PS3.3 C.11.1.1)
    for key, value in attrs.items():
        setattr(item, key, value)
    return pydicom.Sequence([item])


def test_lut_sequences_replace_rescale_and_window(tmp_path):
    stored = np.array([[0, 1], [2, 3]], np.uint16)
    # VOI LUT: stored values 0..3 -> 16-bit display values, scaled by the LUT's own bit depth
    voi = _lut([4, 0, 16], [0, 1000, 40000, 65535])
    path = _write(tmp_path, stored, "voi.dcm", VOILUTSequence=voi, WindowCenter=1, WindowWidth=2)
    np.testing.assert_array_equal(dicom.read(path), [[0, 4], [156, 255]])  # the LUT, not the window
    # Modality LUT: stored values -> modality units 0, 10, 20, 90; no VOI: their full range
    modality = _lut([4, 0, 16], [0, 10, 20, 90], ModalityLUTType="US")
    path = _write(tmp_path, stored, "mod.dcm", ModalityLUTSequence=modality)
    np.testing.assert_array_equal(dicom.read(path), [[0, 28], [57, 255]])


@pytest.mark.parametrize(
    ("function", "expected"),
    [
        # PS3.3 C.11.2.1.2.1: (x - (c - 0.5)) / (w - 1) + 0.5, clipped to [0, 1]
        ("LINEAR", [[0, 67], [134, 255]]),
        # C.11.2.1.3.2: (x - c) / w + 0.5, clipped
        ("LINEAR_EXACT", [[0, 64], [128, 255]]),
        # C.11.2.1.3.1: 1 / (1 + exp(-4 (x - c) / w)), never clipped
        ("SIGMOID", [[30, 69], [128, 225]]),
    ],
)
def test_each_voi_lut_function(tmp_path, function, expected):
    stored = np.array([[90, 95], [100, 110]], np.uint16)  # centre 100, width 20
    path = _write(tmp_path, stored, WindowCenter=100, WindowWidth=20, VOILUTFunction=function)
    np.testing.assert_array_equal(dicom.read(path), expected)


def test_monochrome1_inverts_after_the_window(tmp_path):
    stored = np.array([[0, 100], [200, 300]], np.uint16)
    path = _write(
        tmp_path, stored, PhotometricInterpretation="MONOCHROME1", WindowCenter=150, WindowWidth=201
    )
    # the window gives 0, 0.2525, 0.7525 and 1; white is low values in MONOCHROME1
    np.testing.assert_array_equal(dicom.read(path), [[255, 191], [63, 0]])


_REASONS = (
    "not a DICOM file",
    "unreadable DICOM",
    "DICOM without pixel data",
    "multi-frame DICOM",
    "colour DICOM",
    "cannot decode the pixel data",
    "window width",
)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns of each bad value
def test_corrupt_headers_are_a_one_line_error_or_an_image(tmp_path):
    """1,000 copies of a small file with random bytes of the header overwritten: each one reads
    as an image or raises DicomError with one line that starts with one of our reasons (so
    `predict` reports the file and goes on), never anything else. Before, a bad value
    representation escaped as NotImplementedError (pydicom parses an element when it is first
    read) and Python's own ValueErrors ("could not convert string to float") came through raw."""
    stored = np.arange(64, dtype=np.uint16).reshape(8, 8)
    good = _write(tmp_path, stored, WindowCenter=30, WindowWidth=40).read_bytes()
    pixels_at = good.rindex(stored.tobytes())
    rng = np.random.default_rng(0)
    outcomes = {"image": 0, "error": 0}
    bad = tmp_path / "bad.dcm"
    for _ in range(1000):
        data = bytearray(good)
        for at in rng.integers(132, pixels_at, size=rng.integers(1, 6)):
            data[at] = rng.integers(256)
        bad.write_bytes(bytes(data))
        try:
            image = dicom.read(bad)
        except dicom.DicomError as err:
            message = str(err)
            assert "\n" not in message and message.startswith(_REASONS), message
            outcomes["error"] += 1
        else:
            assert image.dtype == np.uint8 and image.ndim == 2
            outcomes["image"] += 1
    assert outcomes["error"] >= 100 and outcomes["image"] >= 100, outcomes  # both paths ran


def test_dicom_is_recognised_by_its_header_not_its_name(tmp_path):
    named = _write(tmp_path, np.zeros((4, 4), np.uint8), "1.2.840.113619.2.55.3.604688")
    assert dicom.is_dicom(named) and dicom.is_dicom(get_testdata_file("RG1_UNCR.dcm"))
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    (tmp_path / "short").write_bytes(b"DICM")
    assert not dicom.is_dicom(tmp_path / "x.png") and not dicom.is_dicom(tmp_path / "short")
    assert not dicom.is_dicom(tmp_path / "missing")


def test_jpeg_lossless_and_jpeg_ls_decode_with_the_extra():
    """The compressions CR/DX archives often use, decoded by python-gdcm (in the extra):
    JPEG-LS lossless reads exactly like the uncompressed original; JPEG Lossless (process 14,
    8- and 16-bit) reads to a real image."""
    original = dicom.read(get_testdata_file("MR_small.dcm"))
    np.testing.assert_array_equal(
        dicom.read(get_testdata_file("MR_small_jpeg_ls_lossless.dcm")), original
    )
    for name in ("JPEG-LL.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm"):
        image = dicom.read(get_testdata_file(name))
        assert image.ndim == 2 and image.std() > 10, name


def test_an_encoding_without_a_decoder_is_one_line_naming_it(tmp_path):
    """12-bit lossy JPEG: no permissively licensed decoder reads this file; the error names the
    encoding, each decoder's reason and the GPL decoder pydicom lists for it, on one line. A
    damaged uncompressed file is not sent to install decoders."""
    with pytest.raises(dicom.DicomError) as err:
        dicom.read(get_testdata_file("JPEG-lossy.dcm"))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("cannot decode the pixel data (JPEG Extended")
    assert "12-bit precision" in message and "pylibjpeg-libjpeg" in message
    short = _write(tmp_path, np.zeros((8, 8), np.uint16))
    short.write_bytes(short.read_bytes()[:-20])  # pixel data cut short
    with pytest.raises(dicom.DicomError, match="^unreadable DICOM, damaged or incomplete pixel"):
        dicom.read(short)


def test_a_folder_search_takes_dicom_images_and_leaves_the_rest(tmp_path):
    """A PACS export: images named by UID, a DICOMDIR and a report (no pixels) beside them. The
    search takes the images only; a hidden folder inside is skipped, while the folder's own path
    may hold `..` or a hidden part."""
    from cxr_tf.predict import list_images

    export = tmp_path / ".cache" / "export"
    (export / "sub").mkdir(parents=True)
    (export / ".trash").mkdir()
    images = [
        _write(export, np.zeros((4, 4), np.uint8), "1.2.840.113619.2.55.3.1"),
        _write(export / "sub", np.zeros((4, 4), np.uint8), "IM0001"),
    ]
    _write(export / ".trash", np.zeros((4, 4), np.uint8), "IM0002")
    shutil.copy(get_testdata_file("DICOMDIR"), export / "DICOMDIR")
    report = _write(export, np.zeros((4, 4), np.uint8), "SR0001")
    ds = pydicom.dcmread(report)
    for keyword in ("PixelData", "Rows", "Columns"):
        delattr(ds, keyword)
    ds.save_as(report)
    assert dicom.is_dicom(export / "DICOMDIR") and dicom.is_dicom(report)
    assert list_images([export]) == sorted(images)
    assert list_images([export / "sub" / ".."]) == sorted(
        export / "sub" / ".." / p.relative_to(export) for p in images
    )

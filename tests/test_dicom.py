"""cxr_tf.dicom on a real computed radiograph (pydicom-data's RG1: 15-bit MONOCHROME1 with a
window, uncompressed and JPEG 2000) and on generated files for the cases it does not cover."""

import io

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

"""``prepare abd_mri``: CHAOS Train_Sets/MR -> SSL-ALPNet layout (protocol §1.4), on tiny DICOM series."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")

from fsmis_bench.data.datasets import ABD_MRI  # noqa: E402
from fsmis_bench.data.prepare import mri, prepare_abd_mri  # noqa: E402
from fsmis_bench.data.volumes import discover_scan_ids, read_volume  # noqa: E402
from fsmis_bench.errors import DataError  # noqa: E402

ROWS, COLS, Z = 64, 80, 4
PIXEL, THICKNESS = 1.5, 9.0
ORIGIN = (-60.0, -48.0, 100.0)  # world (LPS) position of DICOM row 0, column 0 of the most inferior slice
PATIENTS = (1, 2, 5)
#: Organs in DICOM row/column order (as displayed), by anatomical slice (0 = most inferior):
#: grey value, intensity, rows, columns, slices.
ORGANS = {
    63: (900, slice(12, 28), slice(12, 34), slice(1, 4)),  # liver: top-left of the DICOM image
    126: (700, slice(36, 50), slice(14, 26), slice(0, 2)),  # right kidney
    189: (650, slice(36, 50), slice(54, 66), slice(0, 2)),  # left kidney
    252: (800, slice(14, 30), slice(50, 66), slice(3, 4)),  # spleen: most superior slice only
}


def phantom(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(Z, rows, cols) int16 intensities and uint8 grey masks, slices from inferior to superior."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 20, (Z, ROWS, COLS)).astype(np.int16)
    image[:, 8:56, 8:72] += 400
    grey = np.zeros((Z, ROWS, COLS), dtype=np.uint8)
    for value, (intensity, rows, cols, zs) in ORGANS.items():
        image[zs, rows, cols] = intensity + rng.integers(-20, 20, image[zs, rows, cols].shape)
        grey[zs, rows, cols] = value
    image.flat[rng.choice(image.size, 40, replace=False)] = 5000  # off-resonance spikes, clipped at p99.5
    return image, grey


def write_patient(mr: Path, pid: int, descending: bool) -> Path:
    """DICOM_anon + Ground of one patient; ``descending``: file numbers run from superior to inferior.

    Patient 5 gets a different SeriesInstanceUID in every file, as anonymised CHAOS files may have.
    """
    t2 = mr / str(pid) / "T2SPIR"
    (t2 / "DICOM_anon").mkdir(parents=True)
    (t2 / "Ground").mkdir()
    image, grey = phantom(pid)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(Z):
        number = Z - z if descending else z + 1
        position = (ORIGIN[0], ORIGIN[1], ORIGIN[2] + z * THICKNESS)
        dicom = sitk.GetImageFromArray(image[z])
        dicom.SetSpacing((PIXEL, PIXEL))
        tags = {
            "0008|0060": "MR",
            "0020|000d": f"1.2.826.0.1.{pid}",
            "0020|000e": f"1.2.826.0.1.{pid}.2" + (f".{number}" if pid == 5 else ""),
            "0020|0013": str(number),
            "0020|0032": "\\".join(f"{v:.3f}" for v in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": f"{PIXEL}\\{PIXEL}",
            "0018|0050": str(THICKNESS),
        }
        for tag, value in tags.items():
            dicom.SetMetaData(tag, value)
        writer.SetFileName(str(t2 / "DICOM_anon" / f"IMG-00{pid:02d}-{number:05d}.dcm"))
        writer.Execute(dicom)
        png = t2 / "Ground" / f"IMG-00{pid:02d}-{number:05d}.png"
        sitk.WriteImage(sitk.GetImageFromArray(grey[z]), str(png))
    return t2


def make_raw(root: Path, patients=PATIENTS) -> Path:
    for pid in patients:
        write_patient(root / "Train_Sets" / "MR", pid, descending=pid % 2 == 0)
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, Path]:
    raw = make_raw(tmp_path_factory.mktemp("raw"))
    return raw, mri.prepare(raw, tmp_path_factory.mktemp("out"), patients=PATIENTS)


def test_layout_and_geometry(prepared):
    _, layout = prepared
    assert layout.relative_to(layout.parents[1]).as_posix() == "CHAOST2/chaos_MR_T2_normalized"
    assert discover_scan_ids(layout) == list(PATIENTS)
    for pid in PATIENTS:
        image = sitk.ReadImage(str(layout / f"image_{pid}.nii.gz"))
        # int(size * old / new + 1): 64 -> 77 rows, 80 -> 97 columns, 4 x 9 mm -> 5 slices; then pad to 256.
        assert image.GetSize() == (256, 256, int(Z * THICKNESS / 7.7 + 1)) == (256, 256, 5)
        assert image.GetSpacing() == pytest.approx((1.25, 1.25, 7.7))
        for name in ("label", "superpix-MIDDLE", "fgmask"):
            assert sitk.ReadImage(str(layout / f"{name}_{pid}.nii.gz")).GetSize() == image.GetSize()
        assert (layout.parent / "supervoxels_5000" / f"superpix-MIDDLE_{pid}.nii.gz").is_file()


@pytest.mark.parametrize("pid", PATIENTS)
def test_orientation_labels_follow_anatomy(prepared, pid):
    """Row flip, slice order and PNG pairing: every organ lands on its own intensity and world position."""
    _, layout = prepared
    image_obj = sitk.ReadImage(str(layout / f"image_{pid}.nii.gz"))
    image = sitk.GetArrayFromImage(image_obj)
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(layout / f"label_{pid}.nii.gz")))
    assert set(np.unique(label).tolist()) == {0, 1, 2, 3, 4}
    z_centres = {}
    for label_id, (grey, (intensity, rows, cols, _)) in enumerate(ORGANS.items(), start=1):
        assert mri.GREY_TO_LABEL[grey] == label_id
        # z interpolation blends the organ's edge slices with the body (400): use robust statistics.
        values = image[label == label_id]
        assert abs(np.percentile(values, 90) - intensity) < 30 and np.median(values) > (intensity + 400) / 2
        z, r, c = np.argwhere(label == label_id).mean(axis=0)
        x, y, z_mm = image_obj.TransformContinuousIndexToPhysicalPoint((float(c), float(r), float(z)))
        expected_x = ORIGIN[0] + PIXEL * (cols.start + cols.stop - 1) / 2
        expected_y = ORIGIN[1] + PIXEL * (rows.start + rows.stop - 1) / 2
        assert (x, y) == pytest.approx((expected_x, expected_y), abs=1.0)
        z_centres[label_id] = z_mm
    assert z_centres[2] < z_centres[1] < z_centres[4]  # kidneys below liver below the spleen's slice
    # dcm2nii voxel order: DICOM rows reversed, so the liver drawn top-left sits in the bottom-left quadrant.
    _, r, c = np.argwhere(label == 1).mean(axis=0)
    assert r > 128 and c < 128


@pytest.mark.real_data
def test_grid_convention_matches_published_chaos_volumes(prepared, chaos_dir):
    """Same axis convention as the published preprocessed CHAOS (dcm2nii's LAS: direction diag(1, -1, 1))."""
    ours = sitk.ReadImage(str(prepared[1] / "image_1.nii.gz"))
    published = sitk.ReadImage(str(chaos_dir / "image_1.nii.gz"))
    assert ours.GetDirection() == pytest.approx(published.GetDirection(), abs=1e-6)
    assert ours.GetSpacing() == pytest.approx(published.GetSpacing())
    assert ours.GetSize()[:2] == published.GetSize()[:2] == (256, 256)


def test_clipping_padding_and_read_volume(prepared):
    _, layout = prepared
    volume = read_volume(ABD_MRI, layout, 5)
    raw_image, _ = phantom(5)
    assert volume.image.max() <= np.percentile(raw_image, 99.5) < 5000
    assert volume.image[:, 0, 0].tolist() == [volume.image.min()] * 5  # padded with the minimum
    assert volume.spacing == pytest.approx((7.7, 1.25, 1.25))
    assert volume.image.shape == (5, 256, 256)


def test_classmap_and_manifest(prepared):
    _, layout = prepared
    classmap = json.loads((layout / "classmap_1.json").read_text())
    assert list(classmap) == ["1", "2", "3", "4"]
    assert set(classmap["4"]) == {"1", "2", "5"}
    for pid in ("1", "2", "5"):  # kidneys below the spleen in every patient, whatever the file numbering
        assert max(classmap["2"][pid]) < min(classmap["4"][pid])
    manifest = json.loads((layout / "manifest.json").read_text())
    assert manifest["id_mapping"] == {str(p): f"Train_Sets/MR/{p}/T2SPIR" for p in PATIENTS}
    assert len(manifest["scans"]["2"]["inputs"]) == 2 * Z
    assert manifest["scans"]["2"]["shape"] == [5, 256, 256]


def test_rerun_is_idempotent(prepared, capsys):
    raw, layout = prepared
    before = {p: p.stat().st_mtime_ns for p in layout.parent.rglob("*") if p.is_file()}
    mri.prepare(raw, layout.parents[1], patients=PATIENTS)
    assert {p: p.stat().st_mtime_ns for p in layout.parent.rglob("*") if p.is_file()} == before
    assert capsys.readouterr().err.count("unchanged, skipped") == len(PATIENTS)


def test_changed_png_is_detected(tmp_path):
    raw = make_raw(tmp_path / "raw", patients=(1, 2))
    out = tmp_path / "out"
    layout = mri.prepare(raw, out, superpixels=False, patients=(1, 2))
    png = raw / "Train_Sets" / "MR" / "2" / "T2SPIR" / "Ground" / "IMG-0002-00004.png"
    grey = sitk.GetArrayFromImage(sitk.ReadImage(str(png)))
    grey[:5, :5] = 252
    sitk.WriteImage(sitk.GetImageFromArray(grey), str(png))
    mri.prepare(raw, out, superpixels=False, patients=(1, 2))
    manifest = json.loads((layout / "manifest.json").read_text())
    assert manifest["last_update"] == {
        "recomputed": {"2": "input changed: Train_Sets/MR/2/T2SPIR/Ground/IMG-0002-00004.png"},
        "unchanged": ["1"],
    }


def test_wrong_folder_and_foreign_or_missing_patients(tmp_path):
    with pytest.raises(DataError, match=r"no MR/<pid>/T2SPIR folders"):
        prepare_abd_mri(tmp_path, tmp_path / "out")
    (tmp_path / "MR" / "4" / "T2SPIR").mkdir(parents=True)
    with pytest.raises(DataError, match=r"patients \[4\] are not among the 20 CHAOS training patients"):
        prepare_abd_mri(tmp_path, tmp_path / "out")
    (tmp_path / "MR" / "4" / "T2SPIR").rmdir()
    (tmp_path / "MR" / "4").rmdir()
    (tmp_path / "MR" / "1" / "T2SPIR").mkdir(parents=True)
    with pytest.raises(DataError, match=r"missing T2SPIR folder of patients \[2, 3, 5"):
        prepare_abd_mri(tmp_path, tmp_path / "out")


@pytest.fixture
def one_patient(tmp_path) -> tuple[Path, Path]:
    return tmp_path, write_patient(tmp_path / "MR", 1, descending=False)


def run_one(raw: Path) -> Path:
    return mri.prepare(raw, raw / "out", superpixels=False, patients=(1,))


def test_missing_dicom_series(one_patient):
    raw, t2 = one_patient
    for dcm in (t2 / "DICOM_anon").glob("*.dcm"):
        dcm.unlink()
    with pytest.raises(DataError, match=r"DICOM_anon: no DICOM series found"):
        run_one(raw)
    (t2 / "DICOM_anon").rmdir()
    with pytest.raises(DataError, match=r"DICOM_anon: missing DICOM series folder"):
        run_one(raw)


def test_mixed_or_unreadable_dicom_files(one_patient):
    raw, t2 = one_patient
    extra = t2 / "DICOM_anon" / "IMG-0001-00099.dcm"
    extra.write_bytes((t2 / "DICOM_anon" / "IMG-0001-00002.dcm").read_bytes())  # same position twice
    with pytest.raises(DataError, match=r"DICOM_anon: slices are not evenly spaced"):
        run_one(raw)
    extra.write_bytes(b"not a DICOM file")
    with pytest.raises(DataError, match=r"IMG-0001-00099\.dcm: not a readable DICOM file"):
        run_one(raw)


def test_png_count_and_missing_label(one_patient):
    raw, t2 = one_patient
    (t2 / "Ground" / "IMG-0001-00002.png").rename(t2 / "Ground" / "IMG-0001-00009.png")
    with pytest.raises(DataError, match=r"IMG-0001-00002\.dcm: missing label \(no PNG numbered 2 in"):
        run_one(raw)
    (t2 / "Ground" / "IMG-0001-00009.png").unlink()
    with pytest.raises(DataError, match=r"Ground: 3 PNG masks for 4 DICOM slices"):
        run_one(raw)
    for png in (t2 / "Ground").glob("*.png"):
        png.unlink()
    (t2 / "Ground").rmdir()
    with pytest.raises(DataError, match=r"Ground: missing ground-truth folder"):
        run_one(raw)


def test_unknown_grey_value(one_patient):
    raw, t2 = one_patient
    png = t2 / "Ground" / "IMG-0001-00003.png"
    grey = sitk.GetArrayFromImage(sitk.ReadImage(str(png)))
    grey[0, 0] = 100
    sitk.WriteImage(sitk.GetImageFromArray(grey), str(png))
    with pytest.raises(DataError, match=r"IMG-0001-00003\.png: unknown grey values \[100\]"):
        run_one(raw)


def test_centre_crop_or_pad_matches_reference_indexing():
    volume = np.arange(2 * 300 * 200).reshape(2, 300, 200)
    out, (row, col) = mri.centre_crop_or_pad(volume, 256, pad=-1)
    assert (row, col) == (300 // 2 - 128, 200 // 2 - 128)
    assert out[0, 0, 28] == volume[0, 22, 0]  # output (i, j) <- input (i + row, j + col)
    assert (out[:, :, :28] == -1).all() and (out[:, :, 228:] == -1).all()

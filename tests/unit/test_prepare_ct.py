"""``prepare abd_ct``: Synapse RawData/Training -> SSL-ALPNet layout (protocol §1.3), on tiny HU volumes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")

from fsmis_bench.data.datasets import ABD_CT  # noqa: E402
from fsmis_bench.data.prepare import PREPARERS, ct, prepare_abd_ct  # noqa: E402
from fsmis_bench.data.volumes import discover_scan_ids, read_volume  # noqa: E402
from fsmis_bench.errors import DataError  # noqa: E402

Z = 4
SPACING = (0.75, 0.75, 3.0)  # (x, y, z) mm
CASES = (1, 2, 21)  # scan ids 0, 1, 10


def hu_case(case: int) -> tuple[np.ndarray, np.ndarray]:
    """(Z, 512, 512) int16 HU volume and uint8 Synapse label: air, body, liver (6), spleen (1), kidneys."""
    yy, xx = np.mgrid[:512, :512]
    hu = np.full((Z, 512, 512), -1000, dtype=np.int16)
    label = np.zeros((Z, 512, 512), dtype=np.uint8)
    hu[:, (yy - 256) ** 2 / 200**2 + (xx - 256) ** 2 / 230**2 < 1] = 40
    organs = {
        6: (slice(1, 4), 150, 160, 300),
        1: (slice(2, 4), 150, 360, 120),
        2: (slice(0, 2), 330, 180, 180),
    }
    for label_id, (zs, cy, cx, value) in organs.items():
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 < 45**2
        hu[zs, blob] = value + case
        label[zs, blob] = label_id
    label[0, 330:360, 320:350] = 3
    return hu, label


def write(array: np.ndarray, path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), True)


def make_raw(root: Path, cases=CASES) -> Path:
    for case in cases:
        hu, label = hu_case(case)
        write(hu, root / "RawData" / "Training" / "img" / f"img{case:04d}.nii.gz")
        write(label, root / "RawData" / "Training" / "label" / f"label{case:04d}.nii.gz")
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, Path]:
    raw = make_raw(tmp_path_factory.mktemp("raw"))
    out = tmp_path_factory.mktemp("out")
    return raw, ct.prepare(raw, out, cases=CASES)


def test_layout_files_and_id_mapping(prepared):
    _, layout = prepared
    assert layout == layout.parents[1] / "SABS" / "sabs_CT_normalized"
    assert discover_scan_ids(layout) == [0, 1, 10]
    for k in (0, 1, 10):
        for name in ("image", "label", "superpix-MIDDLE", "fgmask"):
            assert (layout / f"{name}_{k}.nii.gz").is_file()
        assert (layout.parent / "supervoxels_5000" / f"superpix-MIDDLE_{k}.nii.gz").is_file()
    mapping = json.loads((layout / "id_mapping.json").read_text())
    assert mapping["scan_id_to_case"] == {"0": "0001", "1": "0002", "10": "0021"}
    assert mapping["case_to_scan_id"] == {"0001": 0, "0002": 1, "0021": 10}
    manifest = json.loads((layout / "manifest.json").read_text())
    assert manifest["id_mapping"] == {"0": "img0001", "1": "img0002", "10": "img0021"}
    assert [ct.scan_id_of_case(c) for c in (1, 10, 21, 40)] == [0, 9, 10, 29]


def test_geometry_intensities_and_labels(prepared):
    _, layout = prepared
    image = sitk.ReadImage(str(layout / "image_0.nii.gz"))
    array = sitk.GetArrayFromImage(image)
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(layout / "label_0.nii.gz")))
    # 448 * ratio == 256 exactly in floating point -> the reference quirk gives 257; z gets one empty slice.
    assert array.shape == label.shape == (Z + 1, 257, 257)
    assert image.GetSpacing() == pytest.approx((0.75 * 1.75, 0.75 * 1.75, 3.0))
    assert not array[Z].any() and not label[Z].any()
    assert not array[:, 256].any() and not array[:, :, 256].any()
    # Output voxel (z, i, j) samples input voxel (z, 32 + 1.75 i, 32 + 1.75 j): check it where that is exact.
    hu, hu_label = hu_case(1)
    windowed = (np.clip(hu.astype(np.float64), -125, 275) + 125) / 400 * 255
    rows = np.arange(0, 256, 4)
    src = 32 + (rows * 1.75).astype(int)
    np.testing.assert_allclose(array[:Z][:, rows][:, :, rows], windowed[:, src][:, :, src], atol=1e-4)
    np.testing.assert_array_equal(label[:Z][:, rows][:, :, rows], hu_label[:, src][:, :, src])
    assert array.min() == 0 and array.max() == pytest.approx(255)
    assert set(np.unique(label).tolist()) == {0, 1, 2, 3, 6}
    # The crop moves the origin by 32 voxels (the reference keeps the uncropped origin).
    assert image.GetOrigin()[:2] == pytest.approx((32 * 0.75, 32 * 0.75))


def test_loads_through_read_volume(prepared):
    _, layout = prepared
    volume = read_volume(ABD_CT, layout, 10)
    assert volume.image.shape == volume.label.shape == (Z + 1, 256, 256)  # loader's 256 crop
    assert volume.spacing == pytest.approx((3.0, 0.75 * 1.75, 0.75 * 1.75))
    assert volume.image.dtype == np.float32 and volume.label.dtype == np.uint8


def test_classmap_and_manifest(prepared):
    _, layout = prepared
    classmap = json.loads((layout / "classmap_1.json").read_text())
    assert list(classmap) == [str(i) for i in range(1, 14)]
    assert classmap["6"] == {"0": [1, 2, 3], "1": [1, 2, 3], "10": [1, 2, 3]}
    assert classmap["1"]["0"] == [2, 3] and classmap["2"]["0"] == [0, 1] and classmap["3"]["0"] == [0]
    assert classmap["4"] == {"0": [], "1": [], "10": []}
    manifest = json.loads((layout / "manifest.json").read_text())
    assert manifest["recipe_version"] == ct.RECIPE_VERSION and manifest["dataset"] == "abd_ct"
    scan = manifest["scans"]["10"]
    assert scan["shape"] == [Z + 1, 257, 257] and scan["spacing"] == pytest.approx([3.0, 1.3125, 1.3125])
    assert set(scan["inputs"]) == {f"RawData/Training/{k}/{k}0021.nii.gz" for k in ("img", "label")}
    layout_files = {
        f"sabs_CT_normalized/{n}_10.nii.gz" for n in ("image", "label", "superpix-MIDDLE", "fgmask")
    }
    assert set(scan["outputs"]) == {*layout_files, "supervoxels_5000/superpix-MIDDLE_10.nii.gz"}
    assert all(len(digest) == 64 for digest in scan["outputs"].values())


def test_rerun_is_idempotent(prepared, capsys):
    raw, layout = prepared
    before = {p: p.stat().st_mtime_ns for p in layout.parent.rglob("*") if p.is_file()}
    assert ct.prepare(raw, layout.parents[1], cases=CASES) == layout
    assert {p: p.stat().st_mtime_ns for p in layout.parent.rglob("*") if p.is_file()} == before
    err = capsys.readouterr().err
    assert err.count("unchanged, skipped") == 3 and "nothing to do" in err


def test_changed_input_and_damaged_output_are_recomputed(tmp_path, capsys):
    raw = make_raw(tmp_path / "raw", cases=(1, 2))
    out = tmp_path / "out"
    layout = ct.prepare(raw, out, superpixels=False, cases=(1, 2))
    untouched = (layout / "image_0.nii.gz").stat().st_mtime_ns
    hu, _ = hu_case(2)
    write(hu + 7, raw / "RawData" / "Training" / "img" / "img0002.nii.gz")
    capsys.readouterr()
    ct.prepare(raw, out, superpixels=False, cases=(1, 2))
    manifest = json.loads((layout / "manifest.json").read_text())
    assert manifest["last_update"] == {
        "recomputed": {"1": "input changed: RawData/Training/img/img0002.nii.gz"},
        "unchanged": ["0"],
    }
    assert (layout / "image_0.nii.gz").stat().st_mtime_ns == untouched
    assert "scan 1 (img0002): input changed" in capsys.readouterr().err

    (layout / "label_0.nii.gz").unlink()
    ct.prepare(raw, out, superpixels=False, cases=(1, 2))
    manifest = json.loads((layout / "manifest.json").read_text())
    reason = "output missing or modified: sabs_CT_normalized/label_0.nii.gz"
    assert manifest["last_update"]["recomputed"] == {"0": reason}
    assert not (layout / "superpix-MIDDLE_0.nii.gz").exists()

    ct.prepare(raw, out, superpixels=True, cases=(1, 2))  # options changed -> every scan recomputed
    manifest = json.loads((layout / "manifest.json").read_text())
    assert set(manifest["last_update"]["recomputed"]) == {"0", "1"}
    assert (layout / "superpix-MIDDLE_1.nii.gz").is_file()


def test_preparers_registry():
    assert PREPARERS["abd_ct"] is prepare_abd_ct
    assert PREPARERS["abd_mri"].__name__ == "prepare_abd_mri" and set(PREPARERS) == {"abd_ct", "abd_mri"}


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_wrong_folder(tmp_path):
    (tmp_path / "CT").mkdir()
    with pytest.raises(DataError, match=r"no RawData/Training/img folder"):
        prepare_abd_ct(tmp_path, tmp_path / "out")


def test_unlabelled_test_case_is_rejected(tmp_path):
    touch(tmp_path / "RawData" / "Training" / "img" / "img0001.nii.gz")
    touch(tmp_path / "RawData" / "Training" / "img" / "img0061.nii.gz")
    with pytest.raises(DataError, match=r"img0061\.nii\.gz not among the 30 labelled"):
        prepare_abd_ct(tmp_path, tmp_path / "out")


def test_missing_cases_are_listed(tmp_path):
    for case in ct.SYNAPSE_CASES[:-2]:
        touch(tmp_path / "RawData" / "Training" / "img" / f"img{case:04d}.nii.gz")
    with pytest.raises(DataError, match=r"missing 2 of the 30 labelled cases: img0039\.nii\.gz, img0040"):
        prepare_abd_ct(tmp_path, tmp_path / "out")


def test_missing_label(tmp_path):
    touch(tmp_path / "Training" / "img" / "img0001.nii.gz")
    with pytest.raises(DataError, match=r"label: missing label for image img0001\.nii\.gz"):
        ct.prepare(tmp_path, tmp_path / "out", cases=(1,))


def test_unknown_label_value_and_wrong_size(tmp_path):
    make_raw(tmp_path, cases=(1,))
    hu, label = hu_case(1)
    label[0, 0, 0] = 14
    write(label, tmp_path / "RawData" / "Training" / "label" / "label0001.nii.gz")
    with pytest.raises(DataError, match=r"label0001\.nii\.gz: unknown label values \[14\]"):
        ct.prepare(tmp_path, tmp_path / "out", cases=(1,))
    write(hu[:, :500, :500], tmp_path / "RawData" / "Training" / "img" / "img0001.nii.gz")
    with pytest.raises(DataError, match=r"img0001\.nii\.gz: expected a 512x512xZ volume"):
        ct.prepare(tmp_path, tmp_path / "out", cases=(1,))


def test_unreadable_volume(tmp_path):
    make_raw(tmp_path, cases=(1,))
    shutil.copyfile(__file__, tmp_path / "RawData" / "Training" / "img" / "img0001.nii.gz")
    with pytest.raises(DataError, match=r"img0001\.nii\.gz: cannot read NIfTI"):
        ct.prepare(tmp_path, tmp_path / "out", cases=(1,))

"""Reading the preprocessed layout: pairing by id, axis order, and a clear error for every bad input."""

import gzip

import nibabel as nib
import numpy as np
import pytest

from fsmis_bench.data.datasets import ABD_CT, ABD_MRI
from fsmis_bench.data.volumes import discover_scan_ids, read_volume, resolve_layout_dir
from fsmis_bench.errors import DataError


def write(path, array_zhw, spacing=(7.7, 1.25, 1.25), dtype=np.float32):
    affine = np.diag([-spacing[2], spacing[1], spacing[0], 1.0])
    nib.save(nib.Nifti1Image(np.asarray(array_zhw, dtype=dtype).transpose(2, 1, 0), affine), str(path))


def make_scan(folder, scan_id, shape=(4, 8, 6), labels=(0, 1, 2, 3, 4)):
    image = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    label = np.zeros(shape, dtype=np.uint8)
    for i, value in enumerate(labels):
        label[i % shape[0], 0, i] = value
    write(folder / f"image_{scan_id}.nii.gz", image)
    write(folder / f"label_{scan_id}.nii.gz", label, dtype=np.uint8)
    return image, label


def test_reads_zhw_order_and_spacing(tmp_path):
    image, label = make_scan(tmp_path, 3)
    volume = read_volume(ABD_MRI, tmp_path, 3)
    assert volume.image.shape == (4, 8, 6)
    np.testing.assert_array_equal(volume.image, image)
    np.testing.assert_array_equal(volume.label, label)
    assert volume.spacing == pytest.approx((7.7, 1.25, 1.25))


def test_scan_ids_are_paired_by_id_not_position(tmp_path):
    for scan_id in (10, 2, 1):
        make_scan(tmp_path, scan_id)
    assert discover_scan_ids(tmp_path) == [1, 2, 10]


def test_ct_slices_are_cropped_to_256(tmp_path):
    make_scan(tmp_path, 0, shape=(2, 257, 257), labels=(0, 1, 6))
    assert read_volume(ABD_CT, tmp_path, 0).image.shape == (2, 256, 256)


def test_missing_label_file(tmp_path):
    make_scan(tmp_path, 1)
    (tmp_path / "label_1.nii.gz").unlink()
    with pytest.raises(DataError, match=r"label_1\.nii\.gz: file is missing"):
        read_volume(ABD_MRI, tmp_path, 1)


def test_corrupt_nifti(tmp_path):
    make_scan(tmp_path, 1)
    (tmp_path / "image_1.nii.gz").write_bytes(gzip.compress(b"not a nifti file"))
    with pytest.raises(DataError, match=r"image_1\.nii\.gz: cannot read NIfTI"):
        read_volume(ABD_MRI, tmp_path, 1)


def test_truncated_nifti(tmp_path):
    make_scan(tmp_path, 1)
    path = tmp_path / "label_1.nii.gz"
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(DataError, match=r"label_1\.nii\.gz: cannot read NIfTI"):
        read_volume(ABD_MRI, tmp_path, 1)


def test_shape_mismatch(tmp_path):
    make_scan(tmp_path, 1)
    write(tmp_path / "label_1.nii.gz", np.zeros((4, 8, 5)), dtype=np.uint8)
    with pytest.raises(
        DataError, match=r"label_1\.nii\.gz: label shape \(4, 8, 5\) does not match image shape"
    ):
        read_volume(ABD_MRI, tmp_path, 1)


def test_unknown_label_ids(tmp_path):
    make_scan(tmp_path, 1, labels=(0, 1, 7))
    with pytest.raises(DataError, match=r"unknown label ids \[7\] for abd_mri"):
        read_volume(ABD_MRI, tmp_path, 1)


def test_layout_dir_accepts_root_or_folder(tmp_path):
    folder = tmp_path / "CHAOST2" / "chaos_MR_T2_normalized"
    folder.mkdir(parents=True)
    make_scan(folder, 1)
    assert resolve_layout_dir(ABD_MRI, tmp_path) == folder
    assert resolve_layout_dir(ABD_MRI, folder) == folder
    with pytest.raises(DataError, match=r"no image_<id>\.nii\.gz files"):
        resolve_layout_dir(ABD_MRI, tmp_path / "CHAOST2")
    with pytest.raises(DataError, match="does not exist"):
        resolve_layout_dir(ABD_MRI, tmp_path / "nowhere")

"""Bad input around the data readers: every one is one line naming the file or option, exit status 2, nothing
written (CLI ``main`` in-process, except where the point is what the process imports)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fsmis_bench.cli import main

#: Prints which heavy modules the CLI imported before answering.
_IMPORTS_PROBE = (
    "import sys; from fsmis_bench.cli import main; status = main(sys.argv[1:]); "
    "print([m for m in ('torch', 'lightning', 'pandas') if m in sys.modules]); sys.exit(status)"
)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "nosuch", "--fold", "0"], "unknown method 'nosuch'"),
        (["--method", "panet", "--fold", "9"], "--fold 9: fold out of range (valid: 0..4)"),
        (["--method", "panet", "--fold", "0", "--profile", "gpu"], "unknown profile 'gpu'"),
        (["--method", "panet", "--fold", "0", "--dataset", "ct"], "unknown dataset 'ct'"),
    ],
)
def test_bad_names_are_answered_before_torch_is_imported(tmp_path, args, message):
    command = [sys.executable, "-c", _IMPORTS_PROBE, "run", *args, "--output", str(tmp_path / "runs")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stdout.strip() == "[]"
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "runs").exists()


def _one_line(capsys, status: int, pattern: str) -> str:
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and pattern in err[0], err
    return err[0]


#: Model-resolution slices of the tiny dataset's size (the floors' profiles upsample to 256).
SMALL = ("--set", "data.image_size=64")


def _run(tmp_path: Path, data_root: Path, output: Path, *extra: str, method: str = "copy_support") -> int:
    args = ["run", "--method", method, "--fold", "0", "--data-root", str(data_root), "--profile", "smoke"]
    return main([*args, "--output", str(output), "--cache-dir", str(tmp_path / "cache"), *extra])


def test_output_is_an_existing_file(tmp_path, tiny_mri_root, capsys):
    output = tmp_path / "runs"
    output.write_text("notes\n")
    status = _run(tmp_path, tiny_mri_root, output)
    _one_line(capsys, status, f"{output}: the output folder is an existing file")
    assert output.read_text() == "notes\n"


def test_output_below_a_file(tmp_path, tiny_mri_root, capsys):
    (tmp_path / "runs").write_text("")
    status = _run(tmp_path, tiny_mri_root, tmp_path / "runs" / "sub")
    _one_line(capsys, status, "runs/sub: cannot write into the output folder (Not a directory)")


def test_output_not_writable(tmp_path, tiny_mri_root, capsys, monkeypatch):
    """A folder the user may not write to (simulated: the tests may run as root, which writes anywhere)."""
    output = tmp_path / "readonly"
    output.mkdir()
    real_mkdir = Path.mkdir

    def refuse(path: Path, *args, **kwargs) -> None:
        if output in path.parents:
            raise PermissionError(13, "Permission denied", str(path))
        real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    status = _run(tmp_path, tiny_mri_root, output)
    _one_line(capsys, status, f"{output}: cannot write into the output folder (Permission denied)")
    assert not any(output.iterdir())


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_output_read_only_folder(tmp_path, tiny_mri_root, capsys):
    output = tmp_path / "readonly"
    output.mkdir(mode=0o500)
    status = _run(tmp_path, tiny_mri_root, output / "runs")
    _one_line(capsys, status, "cannot write into the output folder (Permission denied)")


def test_truncated_cache_entry_is_a_warning_and_the_same_result(tmp_path, tiny_mri_root, caplog):
    output = tmp_path / "runs"
    assert _run(tmp_path, tiny_mri_root, output, *SMALL) == 0
    first = json.loads(next(output.iterdir()).joinpath("summary.json").read_text())
    entry = sorted((tmp_path / "cache" / "slices").glob("*.npz"))[0]
    entry.write_bytes(entry.read_bytes()[:1000])
    caplog.clear()
    assert _run(tmp_path, tiny_mri_root, output, *SMALL) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and f"{entry}: unreadable slice cache entry (BadZipFile" in warned[0], warned
    again = json.loads(next(output.iterdir()).joinpath("summary.json").read_text())
    assert again["dice"] == first["dice"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (bytes(range(256)), ": not a YAML text file (byte 0x80 at offset 128)"),
        (b"run:\n  method: [panet\n  fold: 0\n", ": not valid YAML (line 3, column 7: expected ',' or ']'"),
        (b"run:\n  method: panet\n\tfold: 0\n", ": not valid YAML (line 3, column 1: found character '\\t'"),
        (b"run: {method: panet, fold: 0}\nnote: \x01\n", ": not valid YAML (unacceptable character #x0001"),
        (b"a sentence, not a spec\n", ": expected a mapping at the top level"),
    ],
)
def test_sweep_spec_that_is_not_yaml(tmp_path, capsys, content, message):
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(content)
    status = main(["sweep", str(spec), "--dry-run", "--results", str(tmp_path / "results")])
    _one_line(capsys, status, f"{spec}{message}")
    assert not (tmp_path / "results").exists()


def test_set_value_that_is_not_yaml(tmp_path, capsys):
    status = _run(tmp_path, tmp_path / "no-data", tmp_path / "runs", "--set", "trainer.max_steps=[1")
    _one_line(
        capsys, status, "--set trainer.max_steps=[1: value is not valid YAML (line 1, column 3: expected"
    )


@pytest.fixture()
def data_copy(tmp_path: Path, tiny_mri_root: Path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(tiny_mri_root, target)
    return target


def _rewrite(path: Path, edit) -> None:
    """Rewrite a NIfTI file, letting ``edit`` change its header (nibabel writes pixdim as given)."""
    img = nib.load(str(path))
    out = nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header)
    edit(out.header)
    nib.save(out, str(path))


@pytest.mark.parametrize(
    ("name", "pixdim", "shown"),
    [
        ("image_8.nii.gz", (0.0, 5.0, 7.7), "(0, 5, 7.7)"),
        ("image_2.nii.gz", (5.0, 5.0, -7.7), "(5, 5, -7.7)"),
        ("label_13.nii.gz", (5.0, 0.0, 7.7), "(5, 0, 7.7)"),
    ],
)
def test_nifti_spacing_that_is_not_positive(tmp_path, data_copy, capfd, name, pixdim, shown):
    """nibabel would read 0 as 1 mm and a negative size as its absolute value: HD95 silently changes."""

    def set_pixdim(header) -> None:
        header["pixdim"][1:4] = pixdim

    _rewrite(data_copy / name, set_pixdim)
    status = _run(tmp_path, data_copy, tmp_path / "runs", *SMALL)
    message = _one_line(
        capfd, status, f"{data_copy / name}: voxel spacing (x, y, z) = {shown} mm in the header"
    )
    assert message.endswith("each must be > 0")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def _replace_scan(folder: Path, scan_id: int, in_plane: int, n_slices: int) -> None:
    """A (n_slices, in_plane, in_plane) scan holding the four CHAOS organs in quadrants of every slice."""
    affine = nib.load(str(folder / f"image_{scan_id}.nii.gz")).affine
    label = np.zeros((in_plane, in_plane, n_slices), np.uint8)  # nibabel order (X, Y, Z)
    half = in_plane // 2
    label[:half, :half], label[half:, :half], label[:half, half:], label[half:, half:] = 1, 2, 3, 4
    image = (100.0 + 50.0 * label).astype(np.float32)
    nib.save(nib.Nifti1Image(image, affine), str(folder / f"image_{scan_id}.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine), str(folder / f"label_{scan_id}.nii.gz"))


@pytest.mark.parametrize(
    ("scan_id", "in_plane", "n_slices", "message"),
    [
        (8, 8, 3, "support scan of fold 0 (ep1): 8x8 slices are too small for the method's 64x64 input"),
        (1, 8, 3, "query scan of fold 0 (ep1): 8x8 slices are too small for the method's 64x64 input"),
        (8, 64, 2, "support scan of fold 0 (ep1): 2 slice(s), fewer than the 3 EP1 chunks"),
        (5, 64, 1, "query scan of fold 0 (ep1): 1 slice(s), fewer than the 3 EP1 chunks"),
    ],
)
def test_support_or_query_volume_too_small(tmp_path, data_copy, capsys, scan_id, in_plane, n_slices, message):
    _replace_scan(data_copy, scan_id, in_plane, n_slices)
    status = _run(tmp_path, data_copy, tmp_path / "runs", *SMALL)
    _one_line(capsys, status, f"{data_copy / f'image_{scan_id}.nii.gz'}: {message}")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())

"""Geometry round trips: every writer and reader keeps spacing, origin and direction exactly."""

from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk

from rada.errors import InputError
from rada.io import Segment, Segmentation, read_segmentation, read_volume, write_segmentation, write_volume
from rada.safe_write import atomic_folder
from rada.volume import Volume


def _oblique_direction() -> tuple[float, ...]:
    """A proper rotation (det +1) about an oblique axis: no axis-aligned shortcut can pass."""
    rot = sitk.VersorTransform((0.3, -0.5, 0.8), 0.7).GetMatrix()
    return tuple(rot)


GEOMETRIES = {
    "anisotropic": ((0.7, 0.9, 3.3), (10.5, -20.25, 33.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)),
    "oblique": ((0.8, 1.1, 2.5), (-101.3, 42.7, -7.9), _oblique_direction()),
    # RAS-oriented data as stored in LPS: x and y axes flipped (what NIfTI files from scanners often hold).
    "ras_flipped": ((1.0, 1.0, 1.5), (120.0, 95.0, -40.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1)),
}


def _volume(geometry: str, dtype=np.int16) -> Volume:
    spacing, origin, direction = GEOMETRIES[geometry]
    rng = np.random.default_rng(1)
    return Volume(rng.integers(-1000, 1000, size=(7, 9, 11)).astype(dtype), spacing, origin, direction)


def _assert_same(a: Volume, b: Volume) -> None:
    assert a.grid_mismatch(b, tol=1e-9) is None, a.grid_mismatch(b, tol=1e-9)
    np.testing.assert_array_equal(a.array, b.array)


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_volume_round_trip_keeps_geometry(tmp_path, geometry, suffix):
    vol = _volume(geometry)
    back = read_volume(write_volume(vol, tmp_path / f"v{suffix}"))
    # NIfTI stores geometry as float32 (and the direction as a quaternion): exact to ~1e-6.
    tol = 1e-5 if suffix == ".nii.gz" else 1e-9
    assert vol.grid_mismatch(back, tol=tol) is None, vol.grid_mismatch(back, tol=tol)
    np.testing.assert_array_equal(vol.array, back.array)
    assert back.array.dtype == vol.array.dtype


def test_dicom_series_folder_is_read_with_geometry(tmp_path):
    vol = _volume("anisotropic")
    image = vol.to_sitk()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = "1.2.826.0.1.3680043.2.1125.1"
    for k in range(image.GetDepth()):
        sl = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        for tag, value in {
            "0020|000e": series_uid, "0020|0013": str(k + 1), "0008|0060": "CT",
            "0020|0032": "\\".join(f"{p:.6f}" for p in position),
            "0020|0037": "1\\0\\0\\0\\1\\0", "0028|0030": f"{vol.spacing[1]}\\{vol.spacing[0]}",
            "0018|0050": str(vol.spacing[2]),
        }.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(tmp_path / f"slice{k:03d}.dcm"))
        writer.Execute(sl)
    back = read_volume(tmp_path)
    assert back.shape == vol.shape
    assert vol.grid_mismatch(back, tol=1e-4) is None
    np.testing.assert_array_equal(back.array, vol.array)


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_seg_nrrd_round_trip_keeps_geometry_and_segments(tmp_path, geometry):
    ref = _volume(geometry, np.uint8)
    a = np.zeros(ref.shape, bool)
    a[2:5, 3:6, 4:9] = True
    b = np.zeros(ref.shape, bool)
    b[3:7, 1:4, 0:3] = True
    b[3, 4, 5] = True  # overlaps segment a: Slicer stores overlaps in a second layer
    seg = Segmentation(ref, [Segment("left atrium", a, (1.0, 0.0, 0.0)), Segment("aorta", b, (0.0, 0.0, 1.0))])
    back = read_segmentation(write_segmentation(seg, tmp_path / "s.seg.nrrd"))
    assert back.reference.grid_mismatch(ref, tol=1e-9) is None
    assert [s.name for s in back.segments] == ["left atrium", "aorta"]
    np.testing.assert_array_equal(back.segment("left atrium").mask, a)
    np.testing.assert_array_equal(back.segment("aorta").mask, b)
    assert back.segment("aorta").color == pytest.approx((0.0, 0.0, 1.0))


def test_seg_nrrd_voxels_land_at_the_same_physical_points(tmp_path):
    """A voxel of the segmentation maps to the same LPS point as in the source volume."""
    ref = _volume("oblique", np.uint8)
    mask = np.zeros(ref.shape, bool)
    mask[5, 2, 8] = True
    path = write_segmentation(Segmentation(ref, [Segment("dot", mask)]), tmp_path / "dot.seg.nrrd")
    back = read_segmentation(path)
    k, j, i = np.argwhere(back.segment("dot").mask)[0]
    p_back = back.reference.to_sitk().TransformIndexToPhysicalPoint((int(i), int(j), int(k)))
    p_ref = ref.to_sitk().TransformIndexToPhysicalPoint((8, 2, 5))
    np.testing.assert_allclose(p_back, p_ref, atol=1e-6)


def test_label_volume_written_as_seg_nrrd_reads_back_as_labels(tmp_path):
    labels = _volume("ras_flipped", np.uint8).with_array(np.zeros((7, 9, 11), np.uint8))
    labels.array[1:4, 2:5, 3:7] = 1
    back = read_volume(write_volume(labels, tmp_path / "l.seg.nrrd"))
    _assert_same(labels, back)


def test_crop_keeps_voxels_at_their_physical_points():
    vol = _volume("oblique")
    sub = vol.crop((slice(2, 5), slice(3, 8), slice(1, 10)))
    p_sub = sub.to_sitk().TransformIndexToPhysicalPoint((0, 0, 0))
    p_vol = vol.to_sitk().TransformIndexToPhysicalPoint((1, 3, 2))
    np.testing.assert_allclose(p_sub, p_vol, atol=1e-9)
    assert sub.array[0, 0, 0] == vol.array[2, 3, 1]


def test_real_la_case_reads_with_documented_geometry(la_dir, la_case_ids):
    vol = read_volume(la_dir / la_case_ids[0] / "image.nii.gz")
    assert vol.spacing == pytest.approx((0.625, 0.625, 0.625))
    assert vol.shape[0] == 88 and vol.array.dtype == np.uint8


def test_bad_inputs_give_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_volume(tmp_path / "missing.nii.gz")
    junk = tmp_path / "junk.nrrd"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="cannot read"):
        read_volume(junk)
    with pytest.raises(InputError, match="no DICOM series"):
        read_volume(tmp_path)
    with pytest.raises(InputError, match="3D"):
        Volume(np.zeros((4, 4)))
    with pytest.raises(InputError, match="spacing must be positive"):
        Volume(np.zeros((2, 2, 2)), spacing=(1, 0, 1))
    with pytest.raises(InputError, match="cannot read segmentation"):
        read_segmentation(junk)


def test_failed_write_leaves_no_partial_file(tmp_path):
    vol = _volume("anisotropic")
    with pytest.raises(InputError, match="cannot write"):
        write_volume(vol, tmp_path / "v.unknownformat")
    assert os.listdir(tmp_path) == []


def test_atomic_folder_is_all_or_nothing(tmp_path):
    """A folder of several files (a cached registration) appears whole or not at all."""
    with atomic_folder(tmp_path / "done") as tmp:
        (tmp / "a").write_bytes(b"1")
        (tmp / "b").write_bytes(b"2")
    assert sorted(p.name for p in (tmp_path / "done").iterdir()) == ["a", "b"]
    with pytest.raises(RuntimeError):
        with atomic_folder(tmp_path / "failed") as tmp:
            (tmp / "a").write_bytes(b"1")
            raise RuntimeError("the writer failed half-way")
    with pytest.raises(InputError, match="cannot write .*done"):  # another writer got there first: theirs stays
        with atomic_folder(tmp_path / "done") as tmp:
            (tmp / "c").write_bytes(b"3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done"]  # no temporary folder left behind
    assert sorted(p.name for p in (tmp_path / "done").iterdir()) == ["a", "b"]


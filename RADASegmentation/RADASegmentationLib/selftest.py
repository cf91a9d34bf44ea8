"""Self-test bodies: plain functions taking a MRML scene.

The module's ``ScriptedLoadableModuleTest`` (inside Slicer) and pytest (on ``slicer-core``,
Testing/slicer/test_slicer_segmentation.py) both call these, so the same checks run in both places.
Each function builds what it needs in the given scene and raises ``AssertionError`` on failure.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import slicer

from rada.annotation import SparseAnnotation
from rada.views import AXIS_OF, VIEW_OF_AXIS
from rada.errors import InputError
from rada.volume import Volume
from RADASegmentationLib import mrml
from RADASegmentationLib.logic import SegmentationLogic, SegmentTask

#: Oblique (rotated about two axes), anisotropic, far from the origin: what must survive.
_A, _B = 0.4, -0.7
_R = np.array([[np.cos(_A), -np.sin(_A), 0.0], [np.sin(_A), np.cos(_A), 0.0], [0.0, 0.0, 1.0]]) @ np.array(
    [[1.0, 0.0, 0.0], [0.0, np.cos(_B), -np.sin(_B)], [0.0, np.sin(_B), np.cos(_B)]])
OBLIQUE = {"spacing": (0.9, 1.0, 1.6), "origin": (-103.25, 17.125, 401.3), "direction": tuple(_R.ravel())}


def expect_input_error(call, text: str, accepted: str, start: bool = False) -> None:
    """Run ``call``; it must refuse with an InputError whose message contains (or, with
    ``start``, begins with) ``text``; ``accepted`` says what went wrong if it did not refuse."""
    try:
        call()
    except InputError as exc:
        message = str(exc)
        assert message.startswith(text) if start else text in message, message
    else:
        raise AssertionError(accepted)


def prepare_scene(scene) -> None:
    """What Slicer does at startup and slicer-core does not: the segmentations logic."""
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    scene._rada_segmentations_logic = logic  # keep it alive as long as the scene


def synthetic_case(shape_zyx=(22, 32, 32), seed: int = 0) -> tuple[Volume, np.ndarray]:
    """A small phantom (rada.phantom) on an oblique anisotropic grid: (image, truth mask)."""
    from rada.phantom import PhantomConfig, make_phantom

    image, label = make_phantom(PhantomConfig(shape_zyx=shape_zyx, spacing_xyz=OBLIQUE["spacing"], seed=seed))
    image = Volume(image.array, **OBLIQUE)
    return image, label.array > 0


def paint(truth: np.ndarray, slices: dict[str, list[int]]) -> np.ndarray:
    """What a user paints: the structure on the given slices (0/1, no 255)."""
    painted = np.zeros(truth.shape, np.uint8)
    for name, indices in slices.items():
        axis = AXIS_OF[name]
        for idx in indices:
            index = (slice(None),) * axis + (idx,)
            painted[index] = truth[index]
    return painted


def largest_slices(truth: np.ndarray) -> dict[str, list[int]]:
    out = {}
    for axis, name in enumerate(VIEW_OF_AXIS):
        areas = truth.sum(axis=tuple(i for i in range(3) if i != axis))
        out[name] = [int(np.argmax(areas))]
    return out


def add_case(scene, image: Volume, painted: np.ndarray, name: str = "case"):
    """Volume node + segmentation node with one painted segment 'organ' on the volume's grid."""
    volume_node = mrml.add_volume_node(scene, image, name)
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{name} segmentation")
    seg_node.CreateDefaultDisplayNodes()
    seg_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    segment_id = seg_node.GetSegmentation().AddEmptySegment("", "organ")
    mrml.set_segment_mask(seg_node, segment_id, image.with_array(painted.astype(np.uint8)))
    return volume_node, seg_node, segment_id


# --- the checks ---------------------------------------------------------------------------

def check_geometry_roundtrip(scene) -> None:
    """Volume -> volume node -> Volume keeps voxels, spacing, origin and direction exactly."""
    image, _ = synthetic_case((6, 7, 9))
    node = mrml.add_volume_node(scene, image, "geometry")
    back = mrml.volume_from_node(node)
    assert back.array.dtype == image.array.dtype and np.array_equal(back.array, image.array)
    assert back.grid_mismatch(image, tol=1e-9) is None, back.grid_mismatch(image, tol=1e-9)
    # IJK->RAS is LPS with the first two axes flipped: voxel (i, j, k) lands where ITK says.
    ijk = np.array([3.0, 5.0, 2.0])
    lps = np.asarray(image.origin) + image.direction_matrix @ (ijk * np.asarray(image.spacing))
    ras = mrml.matrix_to_numpy(_ijk_to_ras(node)) @ np.r_[ijk, 1.0]
    assert np.allclose(ras[:3], lps * [-1, -1, 1], atol=1e-9)
    # A painted segment exported on the volume's grid comes back voxel for voxel.
    painted = np.zeros(image.shape, np.uint8)
    painted[2, 1:5, 2:7] = 1
    painted[1:5, 3, 2:6] = 1
    vol_node, seg_node, sid = add_case(scene, image, painted, "geometry-seg")
    mask = mrml.segment_mask(seg_node, sid, vol_node)
    assert mask.grid_mismatch(image, tol=1e-9) is None and np.array_equal(mask.array, painted)


def _ijk_to_ras(node):
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return m


def check_painting_analysis(scene) -> None:
    """The slices the user painted are recovered per axis; unpainted voxels on them are background."""
    image, truth = synthetic_case()
    slices = largest_slices(truth)
    slices["axial"].append(slices["axial"][0] + 2)  # more slices on one axis are welcome
    vol_node, seg_node, sid = add_case(scene, image, paint(truth, slices), "painting")
    painting = SegmentationLogic().analyze_painting(vol_node, seg_node, sid)
    assert painting.ok, painting.error
    assert {k: sorted(v) for k, v in painting.slices.items()} == {k: sorted(v) for k, v in slices.items()}
    ann = painting.annotation
    assert ann.labels.grid_mismatch(image, tol=1e-9) is None
    for name, indices in slices.items():
        axis = AXIS_OF[name]
        for idx in indices:
            index = (slice(None),) * axis + (idx,)
            assert np.array_equal(ann.array[index], truth[index].astype(np.uint8))
    assert "coronal (J): " + str(slices["coronal"][0]) in painting.summary()


def check_bad_paintings_refused(scene) -> None:
    """A missing axis or an empty segment is refused with the backend's one-line message."""
    image, truth = synthetic_case()
    slices = largest_slices(truth)
    logic = SegmentationLogic()
    no_coronal = {k: v for k, v in slices.items() if k != "coronal"}
    vol_node, seg_node, sid = add_case(scene, image, paint(truth, no_coronal), "bad")
    painting = logic.analyze_painting(vol_node, seg_node, sid)
    assert not painting.ok and painting.error.startswith("no annotated coronal slice"), painting.error
    assert "coronal (J): none" in painting.summary()
    # refused before anything is sent
    expect_input_error(lambda: logic.submit(vol_node, seg_node, sid), "no annotated coronal slice",
                       "a painting without a coronal slice was accepted", start=True)
    empty_id = seg_node.GetSegmentation().AddEmptySegment("", "empty")
    painting = logic.analyze_painting(vol_node, seg_node, empty_id)
    assert not painting.ok and painting.error.startswith("nothing is painted"), painting.error
    expect_input_error(lambda: logic.analyze_painting(vol_node, seg_node, "no-such-segment"),
                       "no segment selected", "a missing segment was accepted")


def fake_task(image: Volume, annotation: SparseAnnotation, label: np.ndarray, volume_node) -> SegmentTask:
    """A finished task as if the server had answered (for checks that need no server)."""
    task = SegmentTask("local", image, annotation, {}, volume_node.GetID())
    task.state, task.label = "done", image.with_array(label.astype(np.uint8))
    task.report = {"preset": "fast", "device": "cpu", "guidance": {"enabled": False, "reason": "no trained model"},
                   "timings_s": {"crop": 0.01, "fuse": 0.1, "total": 0.2}, "structure_volume_ml": 1.0}
    return task


def check_undo(scene) -> None:
    """Undo reverts the last result and only it: scene undo stays off, painting done after the
    result is kept, a replaced result comes back, a new one is removed."""
    image, truth = synthetic_case()
    slices = largest_slices(truth)
    painted = paint(truth, slices)
    vol_node, seg_node, sid = add_case(scene, image, painted, "undo")
    logic = SegmentationLogic()
    painting = logic.analyze_painting(vol_node, seg_node, sid)
    known, fg = painting.annotation.known(), painting.annotation.foreground()
    first = np.where(known, fg, truth)
    task = fake_task(image, painting.annotation, first, vol_node)
    new_id = logic.apply_result(task, seg_node, "organ (RADA)", replace=True)
    assert not scene.GetUndoFlag(), "applying a result turned the scene's undo on for the whole application"
    assert seg_node.GetSegmentation().GetNumberOfSegments() == 2
    assert np.array_equal(mrml.segment_mask(seg_node, new_id, vol_node).array > 0, first)
    assert np.array_equal(mrml.segment_mask(seg_node, sid, vol_node).array, painted), "painting changed"
    # Apply, paint more, Undo: the result goes, the new painting stays.
    more = paint(truth, {"axial": [slices["axial"][0] + 3]})
    repainted = np.maximum(painted, more)
    mrml.set_segment_mask(seg_node, sid, image.with_array(repainted))
    assert logic.can_undo and logic.undo(scene)
    assert seg_node.GetSegmentation().GetSegment(new_id) is None
    assert np.array_equal(mrml.segment_mask(seg_node, sid, vol_node).array, repainted), "undo lost the new painting"
    assert not logic.undo(scene), "one level of undo only"
    # Replace: undo brings back the first result (one level).
    new_id = logic.apply_result(fake_task(image, painting.annotation, first, vol_node), seg_node, "organ (RADA)")
    second = np.where(known, fg, np.roll(truth, 1, axis=2))
    same_id = logic.apply_result(fake_task(image, painting.annotation, second, vol_node), seg_node, "organ (RADA)")
    assert same_id == new_id and seg_node.GetSegmentation().GetNumberOfSegments() == 2
    assert np.array_equal(mrml.segment_mask(seg_node, new_id, vol_node).array > 0, second)
    assert logic.undo(scene)
    assert np.array_equal(mrml.segment_mask(seg_node, new_id, vol_node).array > 0, first), "undo of replace"
    assert seg_node.GetSegmentation().GetNumberOfSegments() == 2
    assert not scene.GetUndoFlag()
    # A result that would overwrite the painted slices is refused.
    bad = fake_task(image, painting.annotation, np.zeros(image.shape, np.uint8), vol_node)
    expect_input_error(lambda: logic.apply_result(bad, seg_node, "bad"), "painted slices",
                       "a result that drops the painted slices was applied")


def check_result_goes_where_chosen_at_submit(scene) -> None:
    """The result lands in the output chosen when Segment was pressed, whatever changed since."""
    from RADASegmentationLib.logic import ResultTarget

    image, truth = synthetic_case()
    painted = paint(truth, largest_slices(truth))
    vol_node, seg_node, sid = add_case(scene, image, painted, "target")
    chosen = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "chosen output")
    logic = SegmentationLogic(scene=scene)
    task = logic.prepare(vol_node, seg_node, sid, {}, ResultTarget(chosen.GetID(), "liver (RADA)", True))
    assert task.job_id_pending and task.target.output_node_id == chosen.GetID()
    done = fake_task(image, task.annotation, np.where(task.annotation.known(), task.annotation.foreground(), truth),
                     vol_node)
    done.target = task.target
    result_id = logic.apply_result(done)
    assert chosen.GetSegmentation().GetSegment(result_id).GetName() == "liver (RADA)"
    assert seg_node.GetSegmentation().GetNumberOfSegments() == 1, "the painted segmentation was written to"
    scene.RemoveNode(chosen)
    expect_input_error(lambda: logic.apply_result(done), "is gone",
                       "a result was applied to a segmentation that no longer exists")


def check_painting_check_leaves_scene_unchanged(scene) -> None:
    """Checking a painting (and applying a result) adds no node to the scene (no _ColorTable)."""
    image, truth = synthetic_case()
    vol_node, seg_node, sid = add_case(scene, image, paint(truth, largest_slices(truth)), "count")
    logic = SegmentationLogic()
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    for _ in range(3):
        assert logic.analyze_painting(vol_node, seg_node, sid).ok
    after = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    added = [scene.GetNodeByID(i).GetName() for i in after - before]
    assert not added, f"checking the painting left nodes in the scene: {added}"
    assert scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode") == 0 or \
        not any(scene.GetNthNodeByClass(i, "vtkMRMLColorTableNode").GetName().endswith("_ColorTable")
                for i in range(scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode")))


def check_painting_watcher(scene) -> None:
    """The painting is re-checked when the user paints (SourceRepresentationModified) or picks
    other inputs, not when another parameter changes, and never after the module is left."""
    from RADASegmentationLib.watch import PaintingWatcher

    image, truth = synthetic_case((8, 10, 12))
    vol_node, seg_node, sid = add_case(scene, image, paint(truth, largest_slices(truth)), "watch")
    scheduled: list[int] = []
    watcher = PaintingWatcher(lambda: scheduled.append(1))
    assert watcher.watch(vol_node, seg_node, sid) and len(scheduled) == 1
    assert not watcher.watch(vol_node, seg_node, sid) and len(scheduled) == 1, "re-checked without a change"
    # A paint stroke in the Segment Editor fires SourceRepresentationModified on the node.
    seg_node.InvokeEvent(slicer.vtkSegmentation.SourceRepresentationModified)
    assert len(scheduled) == 2, "a paint stroke did not trigger a re-check"
    mrml.set_segment_mask(seg_node, sid, image.with_array(truth.astype(np.uint8)))  # a real edit
    assert len(scheduled) >= 3
    other = seg_node.GetSegmentation().AddEmptySegment("", "other")
    count = len(scheduled)
    assert watcher.watch(vol_node, seg_node, other) and len(scheduled) == count + 1
    watcher.stop()  # the module is left
    seg_node.InvokeEvent(slicer.vtkSegmentation.SourceRepresentationModified)
    vol_node.InvokeEvent(slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent)
    assert len(scheduled) == count + 1, "observers survived stop()"
    assert not watcher.watching


def check_segment_end_to_end(scene, logic: SegmentationLogic, preset: str = "fast") -> dict:
    """Paint -> sparse annotation -> server -> result segment on exactly the volume's grid."""
    from rada.metrics import dice

    image, truth = synthetic_case()
    slices = largest_slices(truth)
    painted = paint(truth, slices)
    vol_node, seg_node, sid = add_case(scene, image, painted, "e2e")
    out_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "e2e result")
    out_node.CreateDefaultDisplayNodes()
    stages: list[str] = []
    result_id, task = logic.segment(vol_node, seg_node, sid, out_node, {"preset": preset, "device": "cpu"},
                                    segment_name="organ (RADA)", progress=lambda f, s, m: stages.append(s))
    assert task.state == "done", task.error
    assert task.label.grid_mismatch(image, tol=1e-9) is None, task.label.grid_mismatch(image, tol=1e-9)
    result = mrml.segment_mask(out_node, result_id, vol_node)
    assert np.array_equal(result.array > 0, task.label.array > 0), "result segment differs from the server's label"
    known = task.annotation.known()
    assert np.array_equal(result.array[known] > 0, painted[known] > 0), "painted slices not kept"
    assert np.array_equal(mrml.segment_mask(seg_node, sid, vol_node).array, painted), "painting changed"
    score = dice(result.array > 0, truth)
    assert score > 0.7, f"Dice {score:.3f} against the phantom's truth"
    assert task.report and task.report.get("annotated_slices") == task.annotation.slices()
    line = task.status_line()
    assert line.startswith("Done:") and "guidance off" in line, line
    return {"dice": score, "stages": stages, "status": line}


def check_seg_nrrd_interop(scene, folder: str | Path | None = None) -> None:
    """``.seg.nrrd`` written by Slicer's storage node is read by the backend, and vice versa."""
    from rada.io import Segment, Segmentation, read_segmentation, write_segmentation

    folder = Path(folder or tempfile.mkdtemp(prefix="rada-segnrrd-"))
    image, truth = synthetic_case((12, 16, 18))
    painted = paint(truth, largest_slices(truth))
    vol_node, seg_node, sid = add_case(scene, image, painted, "interop")
    second = seg_node.GetSegmentation().AddEmptySegment("", "truth")
    mrml.set_segment_mask(seg_node, second, image.with_array(truth.astype(np.uint8)))
    # Slicer writes, the backend reads.
    path = folder / "slicer-written.seg.nrrd"
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    assert storage.WriteData(seg_node), "Slicer's storage node could not write the .seg.nrrd"
    read = read_segmentation(path)
    by_name = {s.name: s.mask for s in read.segments}
    # Slicer may crop the saved extent to the segments; compare in physical space via the grid.
    for name, expected in (("organ", painted > 0), ("truth", truth)):
        assert name in by_name, f"segment {name} missing: {list(by_name)}"
        assert _on_grid(read.reference, by_name[name], image).sum() == expected.sum()
        assert np.array_equal(_on_grid(read.reference, by_name[name], image), expected)
    # The backend writes, Slicer reads.
    back = folder / "rada-written.seg.nrrd"
    write_segmentation(Segmentation(image.with_array(np.zeros(image.shape, np.uint8)),
                                    [Segment("liver", truth), Segment("paint", painted > 0)]), back)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "read back")
    reader = slicer.vtkMRMLSegmentationStorageNode()
    reader.SetFileName(str(back))
    assert reader.ReadData(node), "Slicer's storage node could not read the backend's .seg.nrrd"
    liver = mrml.segment_id_by_name(node, "liver")
    assert liver is not None
    assert np.array_equal(mrml.segment_mask(node, liver, vol_node).array > 0, truth)


def _on_grid(reference: Volume, mask: np.ndarray, image: Volume) -> np.ndarray:
    """A mask read on a (possibly cropped) sub-grid of ``image``, pasted into ``image``'s grid."""
    if reference.grid_mismatch(image, tol=1e-6) is None:
        return mask
    assert np.allclose(reference.direction, image.direction, atol=1e-6)
    assert np.allclose(reference.spacing, image.spacing, atol=1e-6)
    offset = np.linalg.solve(image.direction_matrix * np.asarray(image.spacing),
                             np.asarray(reference.origin) - np.asarray(image.origin))
    ox, oy, oz = (int(round(v)) for v in offset)
    out = np.zeros(image.shape, bool)
    z, y, x = mask.shape
    out[oz:oz + z, oy:oy + y, ox:ox + x] = mask
    return out


#: Checks that need no server, in the order the module self-test runs them.
OFFLINE_CHECKS = (check_geometry_roundtrip, check_painting_analysis, check_bad_paintings_refused,
                  check_undo, check_result_goes_where_chosen_at_submit, check_painting_check_leaves_scene_unchanged,
                  check_painting_watcher, check_seg_nrrd_interop)

#: Python packages a check needs beyond what Slicer ships (installed on first use, with consent).
NEEDS = {check_seg_nrrd_interop: ("slicerio",)}
#: What the end-to-end check needs: a local server (FastAPI, uvicorn) with the full backend.
END_TO_END_NEEDS = ("httpx", "fastapi", "uvicorn", "multipart", "torch", "ants", "slicerio")


def missing_modules(names) -> list[str]:
    """The modules in ``names`` that cannot be imported here."""
    import importlib

    out = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            out.append(name)
    return out


def skip_reason(check) -> str | None:
    """Why ``check`` cannot run in this Python (a missing optional package), or None."""
    missing = missing_modules(END_TO_END_NEEDS if check is check_segment_end_to_end else NEEDS.get(check, ()))
    if missing:
        return (f"{check.__name__} skipped: {', '.join(missing)} not installed (RADA installs its packages "
                f"on first use, with your consent: press Segment once)")
    return None

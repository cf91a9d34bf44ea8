"""MRML nodes <-> :class:`rada.volume.Volume`, exact geometry, no Qt.

Slicer stores a volume as ``vtkImageData`` (x fastest) plus an IJK->RAS matrix; RADA's
:class:`~rada.volume.Volume` is a numpy array ``[z, y, x]`` plus ITK-order spacing, origin
and a row-major direction in LPS. The only conversion between the two is a sign flip of
the first two world axes (RAS = diag(-1, -1, 1) LPS); nothing is resampled, so a result
lands voxel for voxel on the user's volume, oblique and anisotropic grids included.

Everything here uses MRML/vtk classes only, so it runs inside Slicer and on ``slicer-core``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from rada.errors import InputError
from rada.volume import Volume

#: RAS <-> LPS (its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def matrix_to_numpy(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def numpy_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def ijk_to_ras(volume: Volume) -> np.ndarray:
    """The 4x4 IJK->RAS matrix of a :class:`Volume`'s grid."""
    lps = np.eye(4)
    lps[:3, :3] = volume.direction_matrix * np.asarray(volume.spacing)[None, :]
    lps[:3, 3] = volume.origin
    return LPS_TO_RAS @ lps


def geometry_from_ijk_to_ras(matrix: np.ndarray) -> dict:
    """spacing, origin, direction (ITK order, LPS) of an IJK->RAS matrix."""
    lps = LPS_TO_RAS @ np.asarray(matrix, dtype=float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise InputError("the volume has a degenerate IJK to RAS matrix (zero spacing)")
    direction = lps[:3, :3] / spacing[None, :]
    return {"spacing": tuple(spacing), "origin": tuple(lps[:3, 3]), "direction": tuple(direction.ravel())}


def image_data_to_array(image: vtk.vtkImageData) -> np.ndarray:
    """A copy of a single-component ``vtkImageData`` as ``[z, y, x]``."""
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise InputError("the volume has no voxels loaded")
    scalars = image.GetPointData().GetScalars()
    if scalars.GetNumberOfComponents() != 1:
        raise InputError(f"the volume has {scalars.GetNumberOfComponents()} components per voxel; "
                         f"RADA segments scalar (grey-level) volumes")
    dims = image.GetDimensions()
    return numpy_support.vtk_to_numpy(scalars).reshape(dims[2], dims[1], dims[0]).copy()


def array_to_image_data(array: np.ndarray, image: vtk.vtkImageData | None = None) -> vtk.vtkImageData:
    """A ``vtkImageData`` (origin 0, spacing 1: geometry lives in the node) holding ``array``."""
    array = np.ascontiguousarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    image = image if image is not None else vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    image.SetOrigin(0.0, 0.0, 0.0)
    image.SetSpacing(1.0, 1.0, 1.0)
    vtk_array = numpy_support.numpy_to_vtk(array.ravel(), deep=True,
                                           array_type=numpy_support.get_vtk_array_type(array.dtype))
    image.GetPointData().SetScalars(vtk_array)
    return image


def volume_from_node(node) -> Volume:
    """A scalar volume node (or labelmap node) as a :class:`Volume` with its exact geometry.

    A parent transform is refused rather than silently ignored (harden it first)."""
    if node is None:
        raise InputError("no input volume selected")
    if node.GetParentTransformNode() is not None:
        raise InputError(f"volume '{node.GetName()}' is under a transform: harden the transform first "
                         f"(Data module, right-click the transform, 'Harden transform')")
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return Volume(image_data_to_array(node.GetImageData()), **geometry_from_ijk_to_ras(matrix_to_numpy(matrix)))


def update_volume_node(node, volume: Volume):
    """Put a :class:`Volume`'s voxels and geometry into an existing volume node."""
    node.SetIJKToRASMatrix(numpy_to_matrix(ijk_to_ras(volume)))
    node.SetAndObserveImageData(array_to_image_data(volume.array))
    return node


def add_volume_node(scene, volume: Volume, name: str, labelmap: bool = False):
    """A new scalar (or labelmap) volume node in ``scene`` holding ``volume``."""
    cls = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(cls, name)
    update_volume_node(node, volume)
    node.CreateDefaultDisplayNodes()
    return node


def oriented_image(mask: Volume) -> slicer.vtkOrientedImageData:
    """A 0/1 :class:`Volume` as a ``vtkOrientedImageData`` (what segments store)."""
    image = slicer.vtkOrientedImageData()
    array_to_image_data((np.asarray(mask.array) > 0).astype(np.uint8), image)
    image.SetImageToWorldMatrix(numpy_to_matrix(ijk_to_ras(mask)))
    return image


def segment_mask(segmentation_node, segment_id: str, reference_node) -> Volume:
    """A segment as a 0/1 :class:`Volume` on the grid of ``reference_node`` (the input volume).

    Exported through a labelmap node (``vtkSlicerSegmentationsModuleLogic``), which resamples
    the segment onto the reference grid only if it was painted on another one (nearest
    neighbour), so what was painted on the volume's own slices stays on them exactly."""
    if segmentation_node is None:
        raise InputError("no segmentation selected: choose the segmentation holding the painted segment")
    segmentation = segmentation_node.GetSegmentation()
    if not segment_id or segmentation.GetSegment(segment_id) is None:
        raise InputError("no segment selected: choose the segment you painted")
    if segmentation_node.GetParentTransformNode() is not None:
        raise InputError(f"segmentation '{segmentation_node.GetName()}' is under a transform: harden it first")
    scene = segmentation_node.GetScene()
    before = _node_ids(scene)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__rada_export")
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node, ids, labelmap, reference_node)
        if not ok:
            raise InputError(f"could not export segment '{segmentation.GetSegment(segment_id).GetName()}' "
                             f"onto the grid of '{reference_node.GetName()}'")
        if labelmap.GetImageData() is None:
            reference = volume_from_node(reference_node)
            return reference.with_array(np.zeros(reference.shape, np.uint8))
        exported = volume_from_node(labelmap)
    finally:
        # The export adds a display node and a "<segmentation>_ColorTable" node besides the
        # labelmap: remove every node it added, so checking a painting leaves the scene as it was.
        for node_id in _node_ids(scene) - before:
            node = scene.GetNodeByID(node_id)
            if node is not None:
                scene.RemoveNode(node)
    return exported.with_array((exported.array > 0).astype(np.uint8))


def _node_ids(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def set_segment_mask(segmentation_node, segment_id: str, mask: Volume) -> None:
    """Replace a segment's voxels with a 0/1 :class:`Volume` (geometry taken from the volume)."""
    image = oriented_image(mask)
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        image, segmentation_node, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE,
        image.GetExtent())


def add_segment(segmentation_node, name: str, mask: Volume, color: Sequence[float] | None = None) -> str:
    """A new segment named ``name`` holding ``mask``; returns its id."""
    segmentation = segmentation_node.GetSegmentation()
    segment_id = segmentation.AddEmptySegment("", name, list(color) if color is not None else None) \
        if color is not None else segmentation.AddEmptySegment("", name)
    set_segment_mask(segmentation_node, segment_id, mask)
    return segment_id


def segment_id_by_name(segmentation_node, name: str) -> str | None:
    segmentation = segmentation_node.GetSegmentation()
    for i in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(i)
        if segmentation.GetSegment(segment_id).GetName() == name:
            return segment_id
    return None

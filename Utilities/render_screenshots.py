"""Render the Extensions Index screenshot from a real case, headless (no desktop Slicer needed).

The case is the real abdominal CT in ``../shared/data/ct_abdomen_liver``. What a user does is
reproduced with the RADASegmentation module's own logic on slicer-core: the liver is "painted"
on one axial, one coronal and one sagittal slice (the reference mask on the slices of largest
area), Segment runs through a real local ``rada serve`` (``fast`` preset, CPU), and the result
segment is read back from the MRML scene. The picture shows the three painted slices with the
strokes (green) and the result's outline (yellow), and the result in 3D (VTK offscreen).

Usage::

    python Utilities/render_screenshots.py [--data ../shared/data] [--out Resources/Screenshots]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "RADASegmentation"), str(REPO)]


@dataclass
class Shot:
    """What the picture shows: the CT, the painting, RADA's result and the run's facts."""

    ct: np.ndarray            # [z, y, x], HU
    spacing: tuple            # (x, y, z) mm
    painted: np.ndarray       # 0/1
    result: np.ndarray        # 0/1
    slices: dict              # axis name -> [index]
    status: str               # the module's status line
    agreement: float          # Dice against the case's reference mask


def segment_real_case(data: Path) -> Shot:
    """Paint three slices of the real CT and press Segment, through the module's logic."""
    import slicer

    from rada.annotation import pick_largest_slices
    from rada.io import read_volume
    from rada.metrics import dice
    from RADASegmentationLib import mrml, selftest
    from RADASegmentationLib.backend import Backend, BackendConfig
    from RADASegmentationLib.logic import SegmentationLogic

    case = data / "ct_abdomen_liver"
    image, label = read_volume(case / "image.nii.gz"), read_volume(case / "label.nii.gz")
    truth = label.array > 0
    slices = pick_largest_slices(truth)
    painted = selftest.paint(truth, slices)
    scene = slicer.vtkMRMLScene()
    selftest.prepare_scene(scene)
    volume_node, seg_node, segment_id = selftest.add_case(scene, image, painted, "abdomen CT")
    seg_node.GetSegmentation().GetSegment(segment_id).SetName("liver")
    backend = Backend(BackendConfig(device="cpu"))
    try:
        result_id, task = SegmentationLogic(backend).segment(volume_node, seg_node, segment_id,
                                                             options={"preset": "fast", "device": "cpu"})
    finally:
        backend.stop()
    result = mrml.segment_mask(seg_node, result_id, volume_node).array > 0
    agreement = dice(result, truth)
    # Show the arrays in LPS order (x to the patient's left, y posterior, z superior) whatever
    # the file's direction, so the views read like Slicer's (the grid is axis-aligned here).
    signs = np.sign(np.diag(image.direction_matrix))
    flips = tuple(2 - i for i in range(3) if signs[i] < 0)  # array axis of x is 2, of z is 0
    ct, painted, result = (np.flip(a, flips) if flips else a for a in (image.array, painted, result))
    size = {"axial": 0, "coronal": 1, "sagittal": 2}
    slices = {name: [image.shape[size[name]] - 1 - i if size[name] in flips else i for i in indices]
              for name, indices in slices.items()}
    return Shot(ct.astype(np.float32), image.spacing, painted, result.astype(np.uint8), slices,
                task.status_line(), agreement)


def render_3d(shot: Shot, size: int = 640) -> np.ndarray:
    """The result's surface and the painted strokes, rendered offscreen; RGB array."""
    import vtk
    from vtk.util import numpy_support

    renderer = vtk.vtkRenderer()
    renderer.SetBackground(0.1, 0.1, 0.14)
    for mask, color, opacity in ((shot.result, (0.95, 0.75, 0.2), 1.0), (shot.painted, (0.2, 0.85, 0.3), 1.0)):
        image = vtk.vtkImageData()
        z, y, x = mask.shape
        image.SetDimensions(x, y, z)
        image.SetSpacing(*shot.spacing)
        image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(np.ascontiguousarray(mask).ravel(), deep=True))
        surface = vtk.vtkFlyingEdges3D()
        surface.SetInputData(image)
        surface.SetValue(0, 0.5)
        smooth = vtk.vtkWindowedSincPolyDataFilter()
        smooth.SetInputConnection(surface.GetOutputPort())
        smooth.SetNumberOfIterations(20)
        smooth.SetPassBand(0.1)
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputConnection(smooth.GetOutputPort())
        mapper.ScalarVisibilityOff()
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*color)
        actor.GetProperty().SetOpacity(opacity)
        renderer.AddActor(actor)
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(size, size)
    window.AddRenderer(renderer)
    camera = renderer.GetActiveCamera()
    # LPS grid: look from the patient's front (anterior = -y), head (+z) up.
    camera.SetPosition(0, -1, 0.25)
    camera.SetFocalPoint(0, 0, 0)
    camera.SetViewUp(0, 0, 1)
    renderer.ResetCamera()
    camera.Zoom(1.3)
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.Update()
    out = grab.GetOutput()
    w, h, _ = out.GetDimensions()
    rgb = numpy_support.vtk_to_numpy(out.GetPointData().GetScalars()).reshape(h, w, -1)[::-1, :, :3]
    return rgb


def compose(shot: Shot, path: Path) -> Path:
    """Three painted slices (strokes and result outline) and the 3D view, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sx, sy, sz = shot.spacing
    window = np.clip((shot.ct + 160.0) / 400.0, 0, 1)  # abdominal window [-160, 240] HU
    fig, axes = plt.subplots(2, 2, figsize=(10, 10), facecolor="black")
    # LPS arrays: axial rows run anterior to posterior (top to bottom), columns patient right to
    # left (radiological: the patient's right on the image's left); coronal and sagittal: head up.
    views = (("axial", 0, sy / sx, False), ("coronal", 1, sz / sx, True), ("sagittal", 2, sz / sy, True))
    for ax, (name, axis, aspect, flip) in zip(axes.ravel()[[0, 2, 3]], views):
        index = shot.slices[name][0]
        take = (slice(None),) * axis + (index,)
        grey, paint, result = window[take], shot.painted[take], shot.result[take]
        origin = "lower" if flip else "upper"
        ax.imshow(grey, cmap="gray", aspect=aspect, origin=origin, interpolation="bilinear")
        ax.imshow(np.ma.masked_where(paint == 0, paint), cmap="Greens", vmin=0, vmax=1.2, alpha=0.55,
                  aspect=aspect, origin=origin, interpolation="nearest")
        if result.any():
            ax.contour(result, levels=[0.5], colors=["#f2bf33"], linewidths=1.6)  # index coordinates, as imshow
        ax.set_title(f"{name} slice {index}: painted (green), RADA result (yellow)", color="white", fontsize=10)
        ax.axis("off")
    axes[0, 1].imshow(render_3d(shot))
    axes[0, 1].set_title("3D: RADA result (yellow) from the three painted slices (green)", color="white",
                         fontsize=10)
    axes[0, 1].axis("off")
    fig.suptitle("RADA Segmentation: liver on a real abdominal CT from three painted slices", color="white",
                 fontsize=13)
    status = shot.status.replace(" | guidance", "\nguidance")
    fig.text(0.5, 0.015, f"Status line: {status}\nagreement with the case's reference mask: Dice {shot.agreement:.3f}",
             color="#cccccc", ha="center", fontsize=8.5)
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, facecolor="black")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "Resources" / "Screenshots")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    shot = segment_real_case(args.data)
    path = compose(shot, args.out / "segmentation.png")
    print(f"{path} ({time.monotonic() - t0:.1f} s): {shot.status}; Dice vs reference {shot.agreement:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

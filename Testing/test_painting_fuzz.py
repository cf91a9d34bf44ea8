"""Any valid painting segments: random structures and random painted slices, never a traceback.

A painting is valid when every axis has an annotated slice and some slice shows structure. The
structures are random unions of boxes and balls (one voxel up to most of the volume, touching
the border or not, one to three pieces); the painted slices are anywhere, so some miss the
structure entirely ("nothing here") and some cut it at its rim.
"""

from __future__ import annotations

import numpy as np
from hypothesis import event, given, settings
from hypothesis import strategies as st

from rada.annotation import SparseAnnotation
from rada.pipeline import segment_case
from rada.views import AXIS_OF, VIEW_NAMES
from rada.volume import Volume


@st.composite
def paintings(draw: st.DrawFn) -> tuple[Volume, SparseAnnotation]:
    shape = tuple(draw(st.integers(4, 18)) for _ in range(3))
    grid = np.indices(shape)
    truth = np.zeros(shape, bool)
    for _ in range(draw(st.integers(1, 3))):
        centre = [draw(st.integers(0, n - 1)) for n in shape]
        radius = [draw(st.integers(0, max(n // 2, 1))) for n in shape]
        if draw(st.booleans()):  # a box
            piece = np.all([np.abs(g - c) <= r for g, c, r in zip(grid, centre, radius)], axis=0)
        else:  # an ellipsoid
            piece = sum(((g - c) / (r + 0.5)) ** 2 for g, c, r in zip(grid, centre, radius)) <= 1
        truth |= piece
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    image = np.where(truth, draw(st.floats(-50, 300)), draw(st.floats(-50, 300))) + rng.normal(0, 10, shape)
    spacing = tuple(draw(st.sampled_from([0.5, 1.0, 2.5])) for _ in range(3))
    slices = {}
    for name in VIEW_NAMES:
        n = shape[AXIS_OF[name]]
        slices[name] = sorted(set(draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=3))))
    # at least one painted slice shows structure: put one through a structure voxel
    z, _, _ = np.argwhere(truth)[draw(st.integers(0, int(truth.sum()) - 1))]
    slices["axial"] = sorted(set(slices["axial"]) | {int(z)})  # axial slices are z planes
    label = Volume(truth.astype(np.uint8), spacing=spacing, origin=(3.0, -7.0, 11.0))
    return (Volume(image.astype(np.float32), spacing=spacing, origin=(3.0, -7.0, 11.0)),
            SparseAnnotation.from_dense(label, slices))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(painting=paintings())
def test_any_valid_painting_segments_and_keeps_the_painted_voxels(painting):
    image, sparse = painting
    fg, shown = sparse.foreground(), sparse.slices()
    for name, indices in shown.items():
        for i in indices:
            if not sparse.slice_mask(name, i).any():
                event("a painted slice shows no structure")
    if fg[[0, -1]].any() or fg[:, [0, -1]].any() or fg[:, :, [0, -1]].any():
        event("painted structure on the volume's border")
    result = segment_case(image, sparse)
    out = result.label
    assert out.shape == image.shape and out.spacing == image.spacing and out.origin == image.origin
    assert set(np.unique(out.array)) <= {0, 1}
    known = sparse.known()
    np.testing.assert_array_equal(out.array[known] > 0, sparse.foreground()[known])

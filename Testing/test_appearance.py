"""The per-case pixel classifier: what it trains on and what that buys."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from rada.annotation import SparseAnnotation
from rada.appearance import AppearanceConfig, _background_draw, appearance_probability
from rada.volume import Volume


def _ball_with_a_shell(shell_value: float = 90.0):
    """A bright ball (100) wrapped in a 2-voxel shell of nearly the same tissue (90), in a wide dark
    field; painted on one slice per axis through the centre."""
    shape = (40, 120, 120)
    z, y, x = np.indices(shape)
    r = np.sqrt((z - 20.0) ** 2 + (y - 60.0) ** 2 + (x - 60.0) ** 2)
    ball, shell = r <= 9, (r > 9) & (r <= 11)
    image = np.where(ball, 100.0, np.where(shell, shell_value, 0.0)) + np.random.default_rng(0).normal(0, 8, shape)
    labels = np.full(shape, 255, np.uint8)
    for axis, i in ((0, 20), (1, 60), (2, 60)):
        plane = [slice(None)] * 3
        plane[axis] = i
        labels[tuple(plane)] = ball[tuple(plane)]
    return image.astype(np.float32), SparseAnnotation(Volume(labels)), ball, shell


def test_most_of_the_background_draw_lies_next_to_the_painted_structure():
    _, sparse, _, _ = _ball_with_a_shell()
    known, fg = sparse.known(), sparse.foreground()
    structure, background = known & fg, known & ~fg
    # painted background within 4 face-neighbour steps of painted structure (a chamfer distance,
    # independent of the dilation the draw uses)
    near = background & (ndimage.distance_transform_cdt(~structure, metric="taxicab") <= 4)
    cfg = AppearanceConfig(max_samples_per_class=400)
    draw = _background_draw(sparse, 400, cfg, np.random.default_rng(1))
    assert draw.size == np.unique(draw).size == 400 and background.flat[draw].all()
    assert near.flat[draw].mean() >= 0.7  # the default share, the ring being large enough here
    # ... from all round the structure, also where the ring lies outside its bounding box
    box = np.zeros_like(structure)
    box[tuple(slice(v.min(), v.max() + 1) for v in np.nonzero(structure))] = True
    assert (near & ~box).flat[draw].sum() >= 20
    # with a quota larger than the ring, all of the ring is drawn, and nothing twice
    big = _background_draw(sparse, 4000, cfg, np.random.default_rng(1))
    assert big.size == np.unique(big).size == 4000 and near.flat[big].sum() == near.sum()
    # a ring of one voxel is a ring too
    ring1 = background & (ndimage.distance_transform_cdt(~structure, metric="taxicab") <= 1)
    one = _background_draw(sparse, 400, AppearanceConfig(near_background_px=1), np.random.default_rng(1))
    assert ring1.flat[one].mean() > 0.3
    # share 0 (or a ring of 0 voxels) is the plain uniform draw
    legacy = np.random.default_rng(1).choice(np.flatnonzero(background), 400, replace=False)
    for off in (AppearanceConfig(near_background_fraction=0.0), AppearanceConfig(near_background_px=0)):
        uniform = _background_draw(sparse, 400, off, np.random.default_rng(1))
        np.testing.assert_array_equal(uniform, legacy)
    assert near.flat[legacy].mean() < 0.1  # the ring is a small part of the painted background


def test_the_ring_reaches_the_volume_border():
    # a structure painted against the crop's first row and column: its ring there is drawn too
    structure, background = np.zeros((3, 12, 12), bool), np.zeros((3, 12, 12), bool)
    structure[1, :3, :3] = True
    background[1] = ~structure[1]
    labels = np.full(structure.shape, 255, np.uint8)
    labels[1] = structure[1]
    sparse = SparseAnnotation(Volume(labels))
    near = background & (ndimage.distance_transform_cdt(~structure, metric="taxicab") <= 4)
    draw = _background_draw(sparse, 60, AppearanceConfig(), np.random.default_rng(0))  # quota > ring
    assert near.flat[draw].sum() == near.sum() and near[1, 0].any() and near[1, :, 0].any()


def test_tissue_touching_the_structure_is_learned_as_background():
    image, sparse, ball, shell = _ball_with_a_shell()
    uniform = appearance_probability(image, sparse, (1.0, 1.0, 1.0),
                                     AppearanceConfig(max_samples_per_class=300, near_background_fraction=0.0))
    near = appearance_probability(image, sparse, (1.0, 1.0, 1.0), AppearanceConfig(max_samples_per_class=300))
    assert near[shell].mean() < 0.6 * uniform[shell].mean()
    assert near[ball].mean() > 0.9

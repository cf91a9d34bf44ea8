"""The fusion of the evidence (rada.fusion) on small volumes made in the test."""

from __future__ import annotations

import numpy as np
import pytest

from rada.annotation import SparseAnnotation
from rada.fusion import FusionConfig, fuse, prior_logit
from rada.volume import Volume


def test_outside_every_warp_the_prior_speaks_against_the_structure_less_firmly_than_for_it():
    config = FusionConfig(prior_sigma=0.0, prior_clip=0.01, prior_floor=0.1)
    warp = np.zeros((6, 6, 6), bool)
    warp[2:4, 2:4, 2:4] = True
    logit = prior_logit([warp], warp.shape, config)
    assert logit[warp] == pytest.approx(np.log(0.99 / 0.01), rel=1e-5)
    assert logit[~warp] == pytest.approx(np.log(0.1 / 0.9), rel=1e-5)
    # no axis carries a shape: the floor everywhere
    assert prior_logit([], warp.shape, config) == pytest.approx(np.log(0.1 / 0.9), rel=1e-5)


def _block_with_a_branch() -> tuple[np.ndarray, SparseAnnotation, np.ndarray, np.ndarray]:
    """A block painted on one slice per axis, and a thin branch off it that no painted slice
    and no warp reaches (a vessel's side branch); the competition says structure along both."""
    shape = (24, 24, 24)
    block = np.zeros(shape, bool)
    block[8:16, 8:16, 8:16] = True
    branch = np.zeros(shape, bool)
    branch[10:12, 10:12, 16:22] = True
    labels = np.zeros(shape, np.uint8)
    labels[...] = 255
    for axis, index in ((0, 12), (1, 13), (2, 9)):
        sl = [slice(None)] * 3
        sl[axis] = index
        labels[tuple(sl)] = block[tuple(sl)]
    annotation = SparseAnnotation(Volume(labels))
    competition = np.where(block | branch, 1.0, -1.0).astype(np.float32)
    return (block | branch).astype(np.float32), annotation, block, competition


def test_the_competition_finds_a_branch_that_every_warp_misses_only_above_the_prior_floor():
    image, annotation, block, competition = _block_with_a_branch()
    branch = (image > 0) & ~block
    hull = block.copy()
    found = {}
    for floor in (0.1, 0.01):  # the default, and the old symmetric clip
        mask, _ = fuse(image, annotation, [block], hull, FusionConfig(prior_floor=floor), growcut=competition)
        assert mask[block].all()
        found[floor] = float(mask[branch].mean())
    # with the old clip only the branch's root survives, where the smoothed prior still leans
    # on the block
    assert found[0.1] == 1.0 and found[0.01] < 0.5, found


def test_inside_the_warps_the_prior_and_the_competition_outvote_a_classifier_sure_of_the_opposite():
    image, annotation, block, competition = _block_with_a_branch()
    warp = np.zeros(block.shape, bool)
    warp[6:18, 6:18, 6:18] = True  # reaches past the block: the prior is sure all over it
    # The classifier is sure (p = 0.001) that the block's last three x-slices are background;
    # the warp and the competition say structure there.
    side = np.zeros(block.shape, bool)
    side[8:16, 8:16, 13:16] = True
    appearance = np.where(block & ~side, 0.999, 0.001).astype(np.float32)
    found = {}
    for clip in (0.1, 0.02):  # the default, and the old clip
        # a plain threshold (refine_confidence 0.5), so that the vote alone decides
        config = FusionConfig(appearance_clip=clip, refine_confidence=0.5)
        mask, _ = fuse(image, annotation, [warp], block.copy(), config, appearance=appearance, growcut=competition)
        found[clip] = float(mask[side & ~annotation.known()].mean())
    # 1.61 (prior: 0.35 * logit(0.99)) + 1.0 (competition) against 2.2 (classifier) and against 3.9
    assert found[0.1] == 1.0 and found[0.02] == 0.0, found

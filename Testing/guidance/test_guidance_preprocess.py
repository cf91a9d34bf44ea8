"""Alpha-CLIP preprocessing: exact values, padding, and the unscaled-mask trap."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rada.errors import InputError
from rada.guidance.preprocess import (
    MASK_BACKGROUND,
    MASK_FOREGROUND,
    CLIP_MEAN,
    CLIP_STD,
    binary_mask,
    preprocess_image,
    preprocess_mask,
    preprocess_pair,
    scale_intensity,
)

FG, BG = 1.9230769230769231, -1.9230769230769231


def test_alpha_constants_are_alpha_clips() -> None:
    assert MASK_FOREGROUND == pytest.approx(FG, abs=1e-12)
    assert MASK_BACKGROUND == pytest.approx(BG, abs=1e-12)


def test_mask_values_are_exactly_plus_minus_1923() -> None:
    m = np.zeros((112, 112), np.uint8)
    m[:, 56:] = 255                     # right half foreground, uint8 0/255 as Alpha-CLIP's recipe
    alpha = preprocess_mask(m)
    assert alpha.shape == (1, 224, 224) and alpha.dtype == torch.float32
    assert torch.allclose(alpha[0, :, :100], torch.tensor(BG), atol=1e-6, rtol=0)
    assert torch.allclose(alpha[0, :, 124:], torch.tensor(FG), atol=1e-6, rtol=0)
    assert float(alpha.max()) <= FG + 1e-6 and float(alpha.min()) >= BG - 1e-6
    none = preprocess_mask(None)
    assert none.shape == (1, 224, 224) and torch.allclose(none, torch.tensor(FG), atol=1e-7, rtol=0)


@pytest.mark.parametrize("encode", [
    lambda m: m,                                   # bool
    lambda m: m.astype(np.int64),                  # int64 0/1
    lambda m: m.astype(np.int64) * 255,            # binary_mask * 255 as int64: the ~979 trap
    lambda m: m.astype(np.uint8) * 255,            # uint8 0/255
    lambda m: m.astype(np.uint8),                  # uint8 0/1
    lambda m: m.astype(np.float32),                # float 0/1
    lambda m: torch.from_numpy(m),                 # torch bool
], ids=["bool", "int64-01", "int64-0255", "uint8-0255", "uint8-01", "float", "torch-bool"])
def test_every_mask_encoding_gives_the_same_alpha(encode) -> None:
    rng = np.random.default_rng(0)
    m = rng.random((70, 90)) > 0.6
    reference = preprocess_mask(m.astype(np.uint8) * 255)
    got = preprocess_mask(encode(m))
    assert torch.equal(got, reference)
    assert float(got.abs().max()) <= FG + 1e-6      # never ~979 = (255 - 0.5) / 0.26


def test_bad_masks_are_refused() -> None:
    with pytest.raises(InputError, match="float mask"):
        preprocess_mask(np.full((8, 8), 255.0, np.float32))   # an unscaled 0/255 float mask
    with pytest.raises(InputError, match="neither"):
        preprocess_mask(np.array([[0, 2], [1, 0]], np.int64))
    with pytest.raises(InputError, match="2D"):
        preprocess_mask(np.zeros((2, 2, 2), bool))
    with pytest.raises(InputError, match="differs"):
        preprocess_pair(np.zeros((10, 12)), np.zeros((12, 10), bool))
    assert binary_mask(np.array([0, 255], np.uint16)).tolist() == [0.0, 1.0]


def test_image_scaling_padding_and_normalisation() -> None:
    a = np.zeros((100, 50), np.float32)
    a[:, :25] = 10.0                                     # left half bright, right half dark
    s = scale_intensity(a)
    assert s.min() == 0.0 and s.max() == 1.0
    x = preprocess_image(a)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    mean = torch.tensor(CLIP_MEAN).view(3, 1)
    std = torch.tensor(CLIP_STD).view(3, 1)
    black, white = -mean / std, (1 - mean) / std
    # padded to 100x100: columns 0..24 and 75..99 are padding (black); 25..49 bright; 50..74 dark
    assert torch.allclose(x[:, :, :40], black.view(3, 1, 1).expand(3, 224, 40), atol=1e-6)
    assert torch.allclose(x[:, :, 62:104], white.view(3, 1, 1).expand(3, 224, 42), atol=1e-6)
    assert torch.allclose(x[:, :, 120:], black.view(3, 1, 1).expand(3, 224, 104), atol=1e-6)
    # the three channels are one grey image
    assert torch.allclose(x * torch.tensor(CLIP_STD).view(3, 1, 1) + torch.tensor(CLIP_MEAN).view(3, 1, 1),
                          (x[0] * CLIP_STD[0] + CLIP_MEAN[0]).expand(3, -1, -1), atol=1e-6)
    # a mask pads with background where the image pads with black
    m = np.ones((100, 50), bool)
    alpha = preprocess_mask(m)
    assert torch.allclose(alpha[0, :, :40], torch.tensor(BG), atol=1e-6)
    assert torch.allclose(alpha[0, :, 62:104], torch.tensor(FG), atol=1e-6)


def test_percentile_clip_ignores_outliers_and_flat_slices() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(100, 10, (64, 64)).astype(np.float32)
    a[0, 0] = 1e6
    s = scale_intensity(a)
    assert s[0, 0] == 1.0 and np.median(s) == pytest.approx(0.5, abs=0.05)
    assert np.all(scale_intensity(np.full((8, 8), 3.0)) == 0)
    with pytest.raises(InputError, match="NaN"):
        scale_intensity(np.full((4, 4), np.nan))


def test_a_real_la_slice(la_dir, la_case_ids) -> None:
    from rada.annotation import SparseAnnotation
    from rada.io import read_volume

    case = la_dir / la_case_ids[0]
    image, label = read_volume(case / "image.nii.gz"), read_volume(case / "label.nii.gz")
    sparse = SparseAnnotation.from_dense(label)
    for view, axis in (("axial", 0), ("coronal", 1), ("sagittal", 2)):
        idx = sparse.annotated_slices(view)[0]
        mask = sparse.slice_mask(view, idx)
        img, alpha = preprocess_pair(np.take(image.array, idx, axis=axis), mask)
        assert img.shape == (3, 224, 224) and alpha.shape == (1, 224, 224)
        assert float(alpha.max()) == pytest.approx(FG, abs=1e-5)        # the atrium is in the slice
        assert float(alpha.min()) == pytest.approx(BG, abs=1e-5)
        frac = float((alpha > 0).float().mean())
        side = max(mask.shape)
        assert frac == pytest.approx(mask.sum() / side ** 2, rel=0.1)  # area kept through pad + resize

"""A synthetic organ phantom for the demo and for tests that need a known answer.

The "organ" is a smooth blob (a union of random ellipsoids, smoothed) next to two
neighbours of similar brightness, inside textured tissue with noise and a slow bias
field, on an anisotropic grid with an oblique direction: enough to make the painted
slices, the intensities and the geometry all matter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from rada.volume import Volume


@dataclass
class PhantomConfig:
    """The synthetic organ phantom of ``rada demo`` and the tests.

    Attributes:
        shape_zyx: array shape ``[z, y, x]``.
        spacing_xyz: voxel size ``(x, y, z)`` in mm (anisotropic on purpose).
        noise: standard deviation of the added Gaussian noise (intensity units; organ 200,
            neighbours 175, tissue about 90).
        seed: random seed of the shapes, texture and noise.
    """
    shape_zyx: tuple[int, int, int] = (56, 96, 96)
    spacing_xyz: tuple[float, float, float] = (0.8, 0.8, 1.6)
    noise: float = 18.0
    seed: int = 0


def _ellipsoid(grid: np.ndarray, center: np.ndarray, radii: np.ndarray) -> np.ndarray:
    return (((grid - center[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) <= 1.0


def make_phantom(config: PhantomConfig | None = None) -> tuple[Volume, Volume]:
    """An organ phantom: blobby organ, similar-intensity neighbours, textured tissue, bias field
    and noise.

    Args:
        config: the phantom's settings (default :class:`PhantomConfig`).

    Returns:
        ``(image, dense label)`` on the same oblique (15 degrees about z), anisotropic grid;
        the image is int16, the label uint8 0/1.
    """
    cfg = config or PhantomConfig()
    rng = np.random.default_rng(cfg.seed)
    shape = np.asarray(cfg.shape_zyx)
    # Physical-ish coordinates (z stretched by the anisotropy) so shapes look round in mm.
    scale = np.asarray(cfg.spacing_xyz[::-1]) / min(cfg.spacing_xyz)
    grid = np.indices(cfg.shape_zyx).astype(np.float32) * scale[:, None, None, None]
    size = shape * scale
    center = size / 2
    organ = np.zeros(cfg.shape_zyx, bool)
    for _ in range(4):
        c = center + rng.uniform(-0.12, 0.12, 3) * size
        r = rng.uniform(0.12, 0.2, 3) * size.min() * np.array([1.0, 1.4, 1.4])
        organ |= _ellipsoid(grid, c, r)
    organ = ndimage.gaussian_filter(organ.astype(np.float32), 1.5) > 0.5
    # Neighbours of similar brightness that touch the organ's bounding box, not the organ.
    neighbours = np.zeros(cfg.shape_zyx, bool)
    for side in (-1, 1):
        c = center + np.array([0.0, side * 0.33, -side * 0.3]) * size
        neighbours |= _ellipsoid(grid, c, np.array([0.16, 0.1, 0.1]) * size.max())
    neighbours &= ~ndimage.binary_dilation(organ, iterations=2)

    tissue = ndimage.gaussian_filter(rng.normal(0, 1, cfg.shape_zyx), 3.0)
    image = 90 + 60 * tissue / (np.abs(tissue).max() + 1e-6)
    image[neighbours] = 175
    image[organ] = 200
    image = ndimage.gaussian_filter(image, 0.8)  # partial-volume blur at the borders
    bias = 1 + 0.15 * np.sin(grid[2] / size[2] * np.pi) * np.cos(grid[1] / size[1] * np.pi)
    image = image * bias + rng.normal(0, cfg.noise, cfg.shape_zyx)

    direction = (0.9659258, -0.2588190, 0.0, 0.2588190, 0.9659258, 0.0, 0.0, 0.0, 1.0)  # 15 deg about z
    origin = (-35.0, 20.0, -60.0)
    img = Volume(image.astype(np.int16), cfg.spacing_xyz, origin, direction)
    return img, img.with_array(organ.astype(np.uint8))

"""The one in-memory image type of RADA: a numpy array plus its physical geometry.

Arrays are in SimpleITK order ``[z, y, x]``; ``spacing`` and ``origin`` are in ITK order
``(x, y, z)``, and ``direction`` is the row-major 3x3 direction matrix in LPS, exactly as
SimpleITK reports it. Keeping all three untouched from input to output is what lets a
segmentation land back on the clinician's volume in Slicer.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from rada.errors import InputError

#: Geometry comparisons tolerate float round-off from file formats (NRRD prints ~17 digits).
GEOMETRY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Volume:
    """A 3D image: ``array`` in ``[z, y, x]`` order and its physical geometry (LPS, mm).

    Attributes:
        array: the voxels ``[z, y, x]``.
        spacing: voxel size ``(x, y, z)`` in mm, all positive.
        origin: physical position ``(x, y, z)`` of voxel ``[0, 0, 0]``'s centre, in mm.
        direction: the 3x3 direction cosine matrix, row-major (SimpleITK order).

    Raises:
        InputError: the array is not 3D, or the geometry has the wrong sizes or a spacing
            that is not positive.
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = field(default=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise InputError(f"expected a 3D volume, got an array of shape {self.array.shape}")
        object.__setattr__(self, "spacing", tuple(float(v) for v in self.spacing))
        object.__setattr__(self, "origin", tuple(float(v) for v in self.origin))
        object.__setattr__(self, "direction", tuple(float(v) for v in self.direction))
        if len(self.spacing) != 3 or len(self.origin) != 3 or len(self.direction) != 9:
            raise InputError("geometry must have 3 spacings, 3 origin values and a 3x3 direction")
        if min(self.spacing) <= 0:
            raise InputError(f"spacing must be positive, got {self.spacing}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """The array's shape ``(z, y, x)``."""
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def direction_matrix(self) -> np.ndarray:
        """The direction as a 3x3 array (columns: the index axes x, y, z in physical space)."""
        return np.asarray(self.direction).reshape(3, 3)

    def with_array(self, array: np.ndarray) -> "Volume":
        """Same geometry, new voxels.

        Args:
            array: the new ``[z, y, x]`` voxels; the shape must not change.

        Returns:
            The new :class:`Volume`.

        Raises:
            InputError: the shape differs.
        """
        if array.shape != self.array.shape:
            raise InputError(f"array shape {array.shape} does not match the grid {self.array.shape}")
        return replace(self, array=array)

    def same_grid(self, other: "Volume", tol: float = GEOMETRY_TOLERANCE) -> bool:
        """True if both volumes sample exactly the same physical grid.

        Args:
            other: the other volume.
            tol: absolute tolerance on spacing, origin and direction.

        Returns:
            Whether size, spacing, origin and direction all match.
        """
        return self.grid_mismatch(other, tol) is None

    def grid_mismatch(self, other: "Volume", tol: float = GEOMETRY_TOLERANCE) -> str | None:
        """How the grids differ, in one line.

        Args:
            other: the other volume.
            tol: absolute tolerance on spacing, origin and direction.

        Returns:
            The first difference (size, spacing, origin or direction), or None if they match.
        """
        if self.shape != other.shape:
            return f"size {_xyz(self.shape)} vs {_xyz(other.shape)} (x, y, z)"
        for name in ("spacing", "origin", "direction"):
            a, b = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            if not np.allclose(a, b, atol=tol, rtol=0):
                return f"{name} {_fmt(a)} vs {_fmt(b)}"
        return None

    def crop(self, bounds: Sequence[slice]) -> "Volume":
        """A sub-volume by array slices ``[z, y, x]``; its origin moves so voxels stay in place.

        Args:
            bounds: three slices ``[z, y, x]`` with step 1 (None starts mean 0).

        Returns:
            The cropped :class:`Volume` (a copy).
        """
        zs, ys, xs = bounds
        start_xyz = (xs.start or 0, ys.start or 0, zs.start or 0)
        origin = np.asarray(self.origin) + self.direction_matrix @ (
            np.asarray(start_xyz, dtype=float) * np.asarray(self.spacing)
        )
        return Volume(self.array[zs, ys, xs].copy(), self.spacing, tuple(origin), self.direction)

    def to_sitk(self) -> sitk.Image:
        """The volume as a SimpleITK image (geometry included).

        Returns:
            The :class:`SimpleITK.Image`.
        """
        image = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "Volume":
        """A volume from a SimpleITK image (geometry included).

        Args:
            image: a 3D scalar image.

        Returns:
            The :class:`Volume`.

        Raises:
            InputError: the image is not 3D or not scalar.
        """
        if image.GetDimension() != 3:
            raise InputError(f"expected a 3D image, got {image.GetDimension()}D")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(
                f"expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components per voxel"
            )
        return cls(
            sitk.GetArrayFromImage(image),
            image.GetSpacing(),
            image.GetOrigin(),
            image.GetDirection(),
        )


def _xyz(shape_zyx: Sequence[int]) -> str:
    return "x".join(str(s) for s in reversed(tuple(shape_zyx)))


def _fmt(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"

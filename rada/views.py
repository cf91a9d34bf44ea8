"""The three views: their names, their one order and the array axis each is fixed on.

A *view* is a slicing direction of a 3D volume: sagittal, coronal or axial. Two different
things are easy to confuse, so both are explicit here:

* the **view order**, :data:`VIEW_NAMES` (sagittal, coronal, axial, as in METHOD.md and the
  paper's tables), used wherever the views are listed, iterated or stored;
* the **array axis** of a view, :data:`AXIS_OF`: for an array in SimpleITK order ``[z, y, x]``
  the axial view fixes z (axis 0), coronal fixes y (axis 1), sagittal fixes x (axis 2).
  :data:`VIEW_OF_AXIS` is its inverse, indexed by array axis; it is a lookup, not a view order.

Everything that names views imports them from here (annotation, propagation, guidance, nets,
training), so this module depends on nothing else in RADA.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The view order used everywhere views are listed (s, c, a).
VIEW_NAMES: tuple[str, str, str] = ("sagittal", "coronal", "axial")
#: Array axis (``[z, y, x]`` order) on which each view's slices have a fixed index.
AXIS_OF: dict[str, int] = {"sagittal": 2, "coronal": 1, "axial": 0}
#: The view whose slices are fixed on array axis 0, 1, 2 (the inverse of :data:`AXIS_OF`).
VIEW_OF_AXIS: tuple[str, str, str] = tuple(sorted(AXIS_OF, key=AXIS_OF.__getitem__))  # type: ignore[assignment]


@dataclass(frozen=True)
class View:
    """A co-training view: its ``name`` and the array ``axis`` along which it was propagated.

    Attributes:
        name: ``sagittal``, ``coronal`` or ``axial``.
        axis: the array axis of ``[z, y, x]`` (0 for axial, 1 coronal, 2 sagittal).
    """

    name: str
    axis: int


#: The three views as :class:`View` records, in :data:`VIEW_NAMES` order.
VIEWS: tuple[View, ...] = tuple(View(name, AXIS_OF[name]) for name in VIEW_NAMES)

__all__ = ["AXIS_OF", "VIEWS", "VIEW_NAMES", "VIEW_OF_AXIS", "View"]

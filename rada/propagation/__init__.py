"""Dense pseudo-labels from a sparse annotation by slice-to-slice registration (METHOD.md 2).

For every annotated slice of every axis, its label is carried outward along that axis, one
slice at a time, in both directions: the neighbouring 2D image slices are registered with
ANTs (``SyNRA`` by default), the previous slice's label is warped with nearest-neighbour
interpolation and cleaned with a ``kernel x kernel`` opening and closing, and the chain goes
on (DeSCO, CVPR 2023). What differs from the reference code:

* The registrations of neighbouring image pairs do not depend on the labels, so they run in
  a process pool (one ITK thread per worker; parallelism across slice pairs), while the
  cheap label warps are chained in the calling process as the transforms arrive.
* Work is restricted to the annotated extent (``SparseAnnotation.extent()``) plus a margin,
  and each axis stops at the structure's extent seen on the other two annotated axes; the
  "warped label is empty" rule still applies (an empty label stays empty, so the rest of
  that chain's registrations are cancelled).
* Registrations are deterministic: ANTs reads a random seed of 0 as "seed from the clock"
  (measured: such runs differ), so ``PropagationConfig.seed`` is passed to ANTs as
  ``seed + 1``. The ITK thread count changes the transforms too (measured), so every
  registration runs in a worker process with one ITK thread, even with one worker: then
  sequential, parallel and repeated runs give identical results.
* A :class:`RegistrationCache`, keyed by the content of the two (cropped, normalised) image
  slices and the registration parameters, lets a second call on the same image (refinement:
  more annotated slices) reuse every registration it already ran; it lives in memory and,
  optionally, in a directory on disk.

Outputs (:class:`PropagationResult`): per view (``axial``/``coronal``/``sagittal``, the view's
axis being its propagation axis) a pseudo-label on the full grid with every annotated voxel
pasted in, and the distance in slices from the nearest annotated slice of that axis
(:func:`rada.train.schedules.voxel_weights` turns it into the voxel weights ``alpha**d``, 1 on
annotated voxels);
and a fused 3D estimate, the majority (>= 2 of 3) of the three views with annotated voxels
exact. Each slice takes the propagation from its nearest annotated slice on that axis
(ties go to the lower slice); slices never reached are background.

The package, along its seams: :mod:`~rada.propagation.config` (what to do, what comes out),
:mod:`~rada.propagation.cache` (registrations kept between calls),
:mod:`~rada.propagation.registration` (ANTs, its seeds and worker pool),
:mod:`~rada.propagation.planning` (seed territories and chains),
:mod:`~rada.propagation.scheduling` (registrations and warps as they arrive),
:mod:`~rada.propagation.assembly` (:func:`propagate`) and
:mod:`~rada.propagation.persistence` (save and load).
"""

from rada.propagation.assembly import propagate
from rada.propagation.cache import RegistrationCache
from rada.propagation.config import RESOLUTIONS, TRANSFORMS, PropagationConfig, PropagationResult, ViewPropagation
from rada.propagation.persistence import load_propagation, save_propagation

__all__ = [
    "RESOLUTIONS",
    "TRANSFORMS",
    "PropagationConfig",
    "PropagationResult",
    "RegistrationCache",
    "ViewPropagation",
    "load_propagation",
    "propagate",
    "save_propagation",
]

"""RADA: 3D organ segmentation from three painted orthogonal slices.

The backend is importable without 3D Slicer; the Slicer modules, the CLI, the job
service and the tests all call the same functions.
"""

__version__ = "0.1.0"

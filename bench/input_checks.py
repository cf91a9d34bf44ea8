"""What the input checks cost: rada.io.read_volume (header probe, completeness/CRC/NaN scan,
finite check) vs a plain SimpleITK read, per format, on a real CT and on a large synthetic CT.

    python bench/input_checks.py [--large 512,512,300]

Prints a side-by-side table (seconds, best of 3): the plain read, the checks alone, and
read_volume (checks + read + finite check). Not run by CI.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from rada.inputs import ReadLimits, check_data_complete, probe_image_file
from rada.io import read_volume, write_volume
from rada.volume import Volume

REPO = Path(__file__).resolve().parents[1]
CT = REPO.parent / "shared" / "data" / "ct_abdomen_liver" / "image.nii.gz"


def _best(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", default="512,512,300", help="x,y,z of the synthetic CT (int16)")
    args = parser.parse_args()
    x, y, z = (int(v) for v in args.large.split(","))
    volumes = {}
    if CT.exists():
        volumes["real CT 122x101x112"] = read_volume(CT)
    rng = np.random.default_rng(0)
    volumes[f"synthetic CT {x}x{y}x{z}"] = Volume(
        rng.normal(0, 300, (z, y, x)).astype(np.int16), (0.8, 0.8, 1.5))
    print(f"{'volume':<28}{'format':<10}{'MiB':>8}{'sitk read':>12}{'checks only':>13}{'read_volume':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, volume in volumes.items():
            for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
                path = write_volume(volume, Path(tmp) / f"v{suffix}")
                plain = _best(lambda: sitk.GetArrayFromImage(sitk.ReadImage(str(path))))
                checks = _best(lambda: check_data_complete(path, probe_image_file(path, ReadLimits())))
                checked = _best(lambda: read_volume(path))
                print(f"{name:<28}{suffix:<10}{volume.array.nbytes / 2**20:>8.1f}{plain:>12.3f}{checks:>13.3f}"
                      f"{checked:>13.3f}")
                path.unlink()


if __name__ == "__main__":
    main()

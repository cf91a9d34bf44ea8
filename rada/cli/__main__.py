"""``python -m rada.cli ...`` (how Slicer starts ``rada serve`` and torchrun starts ``rada train``)."""

import sys

from rada.cli import main

sys.exit(main())

"""``python -m ptera.lab.runs train|extract|probe|receptive-field --config C --run-id R``."""

import sys

from .cli import main

sys.exit(main())

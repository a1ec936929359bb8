"""``python -m ptera.lab.runs train|extract|probe|train-probes|receptive-field --config C``."""

import sys

from .cli import main

sys.exit(main())

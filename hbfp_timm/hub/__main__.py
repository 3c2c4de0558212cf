"""``python -m hbfp_timm.hub``: see :mod:`hbfp_timm.hub.cli`."""
import sys

from .cli import main

sys.exit(main())

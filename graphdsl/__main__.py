"""``python -m graphdsl ...``: the same as the ``graphdsl`` command."""
import sys

from .cli import main

sys.exit(main())

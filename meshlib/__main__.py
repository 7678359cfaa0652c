"""``python -m meshlib`` runs the ``meshlib`` command."""

import sys

from meshlib._cli import main

sys.exit(main())

"""``python -m racefree`` runs the command line."""

import sys

from racefree.cli import main

sys.exit(main())

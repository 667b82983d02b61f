"""``python -m findlit`` runs the ``findlit`` command."""

import sys

from findlit.cli import main

sys.exit(main())

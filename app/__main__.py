"""`python -m app`, and the entry point of the packaged binary."""

import sys

from app.cli import main

sys.exit(main())

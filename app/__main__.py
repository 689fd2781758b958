"""`python -m app`, and the entry point of the packaged binary."""

import multiprocessing
import sys

from app.cli import main

if __name__ == "__main__":
    # The extraction child is a spawned process; in the packaged app it is this same binary,
    # which must run the child's code instead of the app (PyInstaller's freeze_support hook).
    multiprocessing.freeze_support()
    sys.exit(main())

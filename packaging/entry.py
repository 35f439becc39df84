"""Entry point of the PyInstaller executable: the same as the ``orisun`` console script."""

import sys

from orisun.cli import main

if __name__ == "__main__":
    sys.exit(main())

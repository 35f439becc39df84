import sys

from orisun.cli import main

sys.exit(main())

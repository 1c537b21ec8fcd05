import sys

from lrresearch.cli import main

sys.exit(main())

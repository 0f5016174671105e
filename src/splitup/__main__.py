import sys

from splitup.cli import main

sys.exit(main())

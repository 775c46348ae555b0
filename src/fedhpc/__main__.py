import sys

from fedhpc.cli import main

sys.exit(main())

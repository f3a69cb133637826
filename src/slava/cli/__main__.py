import sys

from slava.cli import main

sys.exit(main())

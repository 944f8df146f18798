import sys

from rxapp.cli import main

sys.exit(main())

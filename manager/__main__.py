import sys

from manager.cli import manager_main

sys.exit(manager_main())

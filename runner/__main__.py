import sys

from manager.cli import runner_main

sys.exit(runner_main())

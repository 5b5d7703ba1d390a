"""`python -m emulator.workflows …`: the local Workflows engine process (see server.py)."""

import sys

from emulator.workflows.server import main

sys.exit(main())

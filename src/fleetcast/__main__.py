from __future__ import annotations

import sys

from fleetcast.cli.main import main

sys.exit(main())

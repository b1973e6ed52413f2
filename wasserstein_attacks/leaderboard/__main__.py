"""``python -m wasserstein_attacks.leaderboard``: the same as ``wattack-leaderboard``."""

import sys

from .cli import main

sys.exit(main())

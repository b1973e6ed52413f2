"""The benchmark pipeline (being split into spec, state, results, report and runner)."""

from .runner import *  # noqa: F403
from .runner import __all__, _weights_sha256  # noqa: F401

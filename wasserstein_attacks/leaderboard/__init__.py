"""The leaderboard (being split into schema, io, add, verify, render and cli)."""

from .core import *  # noqa: F403

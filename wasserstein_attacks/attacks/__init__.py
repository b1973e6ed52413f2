"""Wasserstein attacks: one contract (``Attack`` -> ``AttackResult``), a registry, the suite.

``get(name, **kwargs)`` instantiates a registered attack; ``available()`` lists the names.
"""

from .base import Attack, AttackResult, RunOutput, available, eval_mode, get, iterate, register, repair_plan
from .checks import *  # noqa: F403
from .penalty import *  # noqa: F403
from .plans import *  # noqa: F403
from .sinkhorn import *  # noqa: F403
from .suite import *  # noqa: F403

__all__ = [
    "Attack",
    "AttackResult",
    "RunOutput",
    "available",
    "eval_mode",
    "get",
    "iterate",
    "register",
    "repair_plan",
]
for _m in (checks, penalty, plans, sinkhorn, suite):  # noqa: F405
    __all__ += _m.__all__

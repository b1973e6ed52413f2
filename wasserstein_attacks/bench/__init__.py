"""The benchmark pipeline: how robust is a model under the Wasserstein threat model.

One place for each thing: ``spec`` parses the composed Hydra config once into a frozen
``RunSpec`` (or a one-line ``ConfigError``); ``state`` keeps the resumable per-batch
state of a run folder; ``results`` builds, validates and merges ``results.json``; ``report``
draws the plots, prints the summary and logs to wandb; ``runner`` runs the batches (``run``).
"""

from .._util import radius_key, write_json
from .results import SCHEMA_VERSION, load_results, merge, validate_results
from .runner import run
from .spec import (
    ConfigError,
    RunSpec,
    build_threat,
    config_hash,
    parse_shard,
    register_resolvers,
    shard_batches,
)

__all__ = [
    "ConfigError",
    "RunSpec",
    "SCHEMA_VERSION",
    "build_threat",
    "run",
    "merge",
    "load_results",
    "validate_results",
    "parse_shard",
    "shard_batches",
    "config_hash",
    "radius_key",
    "register_resolvers",
    "write_json",
]

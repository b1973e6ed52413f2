"""The leaderboard: benchmark runs as validated data, re-checkable exactly, rendered to static pages.

Layout (the ``leaderboard/`` folder of the repository, or any ``--root``)::

    entries/<dataset>/<threat-id>/<id>.json   one model under one threat model (entry_schema.json)
    entries/<dataset>/<threat-id>/<id>.npz    its per-example arrays and committed broken examples
    README.md, index.html                     written by ``render`` (same entries -> same bytes)

``<threat-id>`` names the threat model: ``W<p>-k<kernel_size>-box01`` (``dense`` for no window,
``nobox`` for no box), e.g. ``W1-k5-box01`` for the project's default ``WassersteinBall``.

The npz (written without pickles, read without ``np.load``) holds, for all ``n`` evaluated examples:
``index`` int64 (dataset index), ``label`` int64, ``clean_correct`` bool, ``broken_cost`` float64 (certified
cost of the cheapest verified adversarial example in units of eps, ``+inf`` if none, 0 for clean errors),
``broken_by`` int16 (row of ``attack_names``, -1 for none), ``attack_names`` unicode; and for a fixed
random subset of at most 100 broken examples: ``sample_index`` int64 ``[m]``, ``sample_clean`` and
``sample_adversarial`` float ``[m, C, H, W]`` in pixel space. An example is broken at radius ``r`` when
``broken_cost <= r * (1 + cost_rel)`` (the ball's certification rule); claimed accuracies must lie
between that count and the strict ``broken_cost <= r`` count.

Entries are untrusted input: strict schema, size limits, canonical radius keys, the npz's sha256,
claimed numbers consistent with the per-example arrays, HTML escaping when rendered, checkpoints
loaded only with ``torch.load(..., weights_only=True)`` and only when their sha256 matches the entry.
The verification block is written by ``verify`` only; claimed numbers are never modified.

Modules, each importing only those before it: ``.schema`` (limits, what a valid entry is),
``.io`` (files), ``.verify``, ``.add``, ``.render``, ``.cli``
(``wattack-leaderboard {validate,add,verify,render}``).
"""

from .._util import radius_key
from .add import add_entry
from .cli import main
from .io import Entry, entry_paths, load_entry, validate_all
from .render import render, write_rendered
from .schema import (
    HEADLINE_RADIUS,
    MAX_ENTRY_BYTES,
    MAX_NPZ_BYTES,
    MAX_SAMPLE,
    SCHEMA_VERSION,
    EntryError,
    entry_problems,
    threat_id,
)
from .verify import load_data, load_entry_suite, load_model, verify_entry

__all__ = [
    "EntryError",
    "Entry",
    "radius_key",
    "threat_id",
    "entry_problems",
    "entry_paths",
    "load_entry",
    "validate_all",
    "add_entry",
    "verify_entry",
    "render",
    "write_rendered",
    "load_model",
    "load_data",
    "load_entry_suite",
    "main",
    "SCHEMA_VERSION",
    "HEADLINE_RADIUS",
    "MAX_ENTRY_BYTES",
    "MAX_NPZ_BYTES",
    "MAX_SAMPLE",
]

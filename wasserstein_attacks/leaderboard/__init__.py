"""The leaderboard: benchmark runs as validated data, re-checkable exactly, rendered to static pages.

Layout (the ``leaderboard/`` folder of the repository, or any ``--root``)::

    entries/<dataset>/<threat-id>/<id>.json   one model under one threat model (entry_schema.json)
    entries/<dataset>/<threat-id>/<id>.npz    its per-example arrays and committed broken examples
    certified/<dataset>/W1/<id>.json          a randomized-smoothing classifier certified by CERTIFY
    certified/<dataset>/W1/<id>.pt            its base model's state dict (certified_schema.json)
    README.md, index.html                     written by ``render`` (same entries -> same bytes)

``<threat-id>`` names the threat model: ``W<p>-k<kernel_size>-box01`` (``dense`` for no window,
``nobox`` for no box), e.g. ``W1-k5-box01`` for the project's default ``WassersteinBall``. The
tolerances (``mass_rel``, ``cost_rel``, ``box_abs``) are part of the threat model: every entry must
state the canonical ones, ``WassersteinBall``'s defaults (``CANONICAL_TOLERANCES``).

The npz (written without pickles, read without ``np.load``) holds, for all ``n`` evaluated examples:
``index`` int64 (dataset index), ``label`` int64, ``clean_correct`` bool, ``broken_cost`` float64 (certified
cost of the cheapest verified adversarial example in units of eps, ``+inf`` if none, 0 for clean errors),
``broken_by`` int16 (row of ``attack_names``, -1 for none), ``attack_names`` unicode; and for a fixed
random subset of at most 100 broken examples: ``sample_index`` int64 ``[m]``, ``sample_clean`` and
``sample_adversarial`` float ``[m, C, H, W]`` in pixel space. An example is broken at radius ``r`` when
``broken_cost <= r * (1 + cost_rel)`` (the ball's certification rule); claimed accuracies must lie
between that count and the strict ``broken_cost <= r`` count.

Entries are untrusted input: strict schema, size limits, canonical radius keys and tolerances, the
npz's sha256, claimed numbers consistent with the per-example arrays, every committed adversarial
example re-checked by the exact LP (in the box, inside the ball of its counted radius, claims no higher
than the examples allow), HTML escaping when rendered, checkpoints loaded only with
``torch.load(..., weights_only=True)`` and only when their sha256 matches the entry.
The verification block is written by ``verify`` only; claimed numbers are never modified. It binds
to the entry (sha256 of the entry without the block, of the npz and of the checkpoint, and the
suite's name and version): a record copied from another entry, or older than the entry's last change,
is reported by ``validate`` and rendered as "verification does not match the entry", never "verified".

Certified entries (``.certified``) are ranked in a table of their own, never with the empirical ones:
``validate`` recomputes each example's Clopper-Pearson bound and radius, and the claimed certified
accuracies, from the per-example counts, and checks the committed checkpoint's hashes; ``verify`` re-runs
CERTIFY with that checkpoint (``.certified_verify``). A certificate covers exactly mass-preserving
changes within W1 radius ``r`` (units of eps) with any window, at confidence ``1 - alpha`` per example.

Every rendered rank comes with a rank range: the places that paired exact tests on the per-example
results (McNemar, Holm-corrected over the table's pairs) do not exclude (``.ranking``).

Modules, each importing only those before it: ``.ranking`` (paired tests, no entry I/O), ``.schema``
(limits, what a valid entry is), ``.committed`` (the exact re-check), ``.io`` (files), ``.verify``,
``.add``, ``.compare`` (two models example by example), ``.certified``, ``.certified_add``,
``.certified_verify``, ``.render``, ``.cli`` (``wattack-leaderboard
{validate,add,add-certified,verify,render,compare}``).
"""

from .._util import radius_key
from .add import add_entry
from .certified import (
    CERTIFIED_RADII,
    MAX_CERTIFIED_BYTES,
    CertifiedEntry,
    certified_binding_problems,
    certified_paths,
    certified_problems,
    load_certified,
    validate_certified,
    validate_certified_all,
)
from .certified_add import add_certified
from .certified_verify import verify_certified
from .cli import main
from .io import Entry, entry_paths, load_entry, validate_all
from .render import render, write_rendered
from .schema import (
    CANONICAL_TOLERANCES,
    HEADLINE_RADIUS,
    MAX_ENTRY_BYTES,
    MAX_NPZ_BYTES,
    MAX_SAMPLE,
    SCHEMA_VERSION,
    EntryError,
    binding_problems,
    entry_problems,
    entry_sha256,
    threat_id,
)
from .verify import load_data, load_entry_suite, load_model, verify_entry

__all__ = [
    "EntryError",
    "Entry",
    "radius_key",
    "threat_id",
    "entry_problems",
    "entry_sha256",
    "binding_problems",
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
    "CertifiedEntry",
    "certified_paths",
    "certified_problems",
    "certified_binding_problems",
    "validate_certified",
    "validate_certified_all",
    "load_certified",
    "add_certified",
    "verify_certified",
    "CERTIFIED_RADII",
    "MAX_CERTIFIED_BYTES",
    "SCHEMA_VERSION",
    "HEADLINE_RADIUS",
    "CANONICAL_TOLERANCES",
    "MAX_ENTRY_BYTES",
    "MAX_NPZ_BYTES",
    "MAX_SAMPLE",
]

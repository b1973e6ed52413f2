"""Solvers on local transport plans: projections, oracles and repairs, one implementation each.

Layered as geometry -> problem -> solver: ``rows`` (the rows of a batch's plans that carry mass,
and the per-example cost budget ``eps * N``), ``search`` (the multiplier of the cost constraint),
then the solvers built on them: ``simplex`` (Euclidean projections, Wu et al.), ``lmo`` (the
entropic Frank-Wolfe oracle), ``capacity`` (the pixel box: Wu et al.'s dual post-projection and
the local box repair) and ``sinkhorn`` (the entropic projection of Wong et al. and Hu et al.).
"""

from .capacity import (
    capacity_projection,
    capacity_rows,
    fit_box,
    grid_overflow,
    overflow_slack,
    return_overflow,
)
from .lmo import entropic_lmo, lmo_rows
from .rows import PlanRows, cost_budget, example_max, public_rows, shrink_to_budget, toward_identity
from .search import Family, multiplier_search
from .simplex import project_plan, project_rows, project_simplex, projection_family
from .sinkhorn import (
    Projection,
    SinkhornDuals,
    dual_objective,
    lambertw,
    lambertw_exp,
    sinkhorn_plan,
    sinkhorn_projection,
)

__all__ = [
    "PlanRows",
    "public_rows",
    "cost_budget",
    "example_max",
    "shrink_to_budget",
    "toward_identity",
    "Family",
    "multiplier_search",
    "project_simplex",
    "projection_family",
    "project_rows",
    "project_plan",
    "entropic_lmo",
    "lmo_rows",
    "overflow_slack",
    "return_overflow",
    "grid_overflow",
    "fit_box",
    "capacity_rows",
    "capacity_projection",
    "lambertw",
    "lambertw_exp",
    "SinkhornDuals",
    "Projection",
    "sinkhorn_projection",
    "sinkhorn_plan",
    "dual_objective",
]

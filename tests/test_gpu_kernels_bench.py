"""Smoke test of ``benchmarks/gpu_kernels.py``: on a CPU, under Triton's interpreter, it writes valid JSON."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.skipif(
    importlib.util.find_spec("triton") is None or os.environ.get("TRITON_INTERPRET", "0") in ("", "0"),
    reason="the kernel path runs on a CPU only in Triton's interpreter: set TRITON_INTERPRET=1",
)
def test_gpu_kernels_smoke_writes_json(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("gpu_kernels", None)
    import gpu_kernels

    out = tmp_path / "gpu_kernels-cpu.json"
    gpu_kernels.main(["--device", "cpu", "--smoke", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["smoke"] is True
    keys = {"attack", "dataset", "batch", "path", "ms_per_iteration", "launches_per_iteration",
            "syncs_per_iteration", "model_fwd_bwd_ms"}
    rows = report["rows"]
    datasets, paths = ("mnist", "cifar10-shaped"), ("kernel", "torch")
    assert {(r["attack"], r["dataset"], r["path"]) for r in rows} == {
        (a, d, p) for a in gpu_kernels.ATTACKS for d in datasets for p in paths}
    for r in rows:
        assert keys <= set(r), r
        assert r["certified"] and r["same_results"], r

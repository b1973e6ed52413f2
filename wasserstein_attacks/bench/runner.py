"""Running a benchmark: ``run`` evaluates the batches of one config, sequentially or in worker processes.

A run folder holds::

    results.json    numbers (schema: results_schema.json): clean and robust accuracy per radius,
                    per-attack cumulative curves, per-example outcomes, provenance; deterministic bytes
    examples.npz    per-example arrays and the verified adversarial images (re-check them!)
    timings.json    wall times (kept out of results.json so that reruns compare equal)
    curve.png       robust accuracy against radius, cumulative per attack and the suite's worst case
    examples.png    clean / adversarial / difference images
    state/          header.json, run.json and one batch-NNNNNN.npz per finished batch (resume, merge)

Determinism: per-example seeds come from the run seed and the dataset index, batches are fixed slices
of the dataset, shards are runs of whole batches, and results are built from the saved batches only.
So a run killed at any point and started again, or shards combined by ``merge``, give a
``results.json`` identical byte for byte to an uninterrupted run.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig

from .results import finish, run_header
from .spec import RunSpec
from .state import CorruptStateError, batch_path, load_batch, save_batch, start_state

__all__ = ["run"]

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def run(cfg: DictConfig, run_dir: str | Path, *, attack_label: str | None = None) -> dict:
    """Evaluate ``cfg`` (a composed ``conf/config.yaml``) into ``run_dir``; returns the results dict.

    Resumes from ``run_dir/state`` when the same config ran there before; an unreadable batch file is
    computed again. With ``shard=i/n`` only that slice of whole batches runs; ``merge`` then combines
    the shard folders. ``ConfigError`` (one line) on a bad config, before any work.
    """
    run_dir = Path(run_dir)
    spec = RunSpec.from_config(cfg, attack_label=attack_label)
    for w in (spec.model_checks or {}).get("warnings", []):
        print(f"model check warning: {w}", file=sys.stderr, flush=True)
    batches = spec.batches
    shard = (
        None
        if spec.shard is None
        else {
            "index": spec.shard[0],
            "count": spec.shard[1],
            "batches": [batches.start, batches.stop],
            "n_batches": spec.n_batches,
        }
    )
    header = start_state(run_dir, run_header(spec), {"shard": shard, "n_batches": spec.n_batches})
    saved = {k: _saved_batch(batch_path(run_dir, k), header) for k in batches}
    todo = [k for k, b in saved.items() if b is None]
    workers = min(spec.workers, len(todo))
    if workers > 1 and spec.device.type == "cpu":
        _run_parallel(spec, header, run_dir, todo, workers)
        saved.update({k: load_batch(batch_path(run_dir, k), header) for k in todo})
    from tqdm.auto import tqdm

    loaded, robust, seen = [], 0, 0
    bar = tqdm(batches, desc="batches", unit="batch", disable=not spec.progress)
    for k in bar:
        batch = saved[k]
        if batch is None:
            _compute_batch(_batch_job(spec, header, run_dir, k))
            batch = load_batch(batch_path(run_dir, k), header)  # results come from saved files in every mode
            if batch is None:
                raise RuntimeError(f"could not read back {batch_path(run_dir, k)}")
        loaded.append((k, batch))
        robust += int(batch[0].robust(spec.radii[-1]).sum())
        seen += batch[0].indices.numel()
        bar.set_postfix(robust_at_max=f"{robust}/{seen}")
    bar.close()
    return finish(run_dir, header, loaded, shard, spec.logger)


def _saved_batch(path: Path, header: dict):
    """Return the finished batch at ``path``, or ``None`` to compute it (missing, other config, corrupt)."""
    try:
        return load_batch(path, header)
    except CorruptStateError as exc:
        print(f"{exc}: computing that batch again", file=sys.stderr, flush=True)
        return None


def _batch_job(spec: RunSpec, header: dict, run_dir: Path, k: int, *, progress: bool | None = None) -> dict:
    """Everything one batch needs, as plain picklable values (a worker process gets exactly this)."""
    lo, hi = k * spec.batch_size, min((k + 1) * spec.batch_size, spec.images.shape[0])
    return {
        "suite": spec.suite,
        "model": spec.model,
        "threat": spec.threat,
        "radii": spec.radii,
        "images": spec.images[lo:hi],
        "labels": spec.labels[lo:hi],
        "indices": torch.arange(lo, hi),
        "seed": spec.seed,
        "batch": k,
        "exact_fraction": spec.exact_fraction,
        "device": spec.device,
        "progress": spec.progress if progress is None else progress,
        "path": batch_path(run_dir, k),
        "config_hash": header["config_hash"],
    }


def _compute_batch(job: dict) -> int:
    """Run the suite on one batch and save its state file (atomically); returns the batch number."""
    dev = job["device"]
    start = time.perf_counter()
    # Guard against any global-RNG use inside models or attacks: fixed per batch, whatever ran before.
    torch.manual_seed(job["seed"] * 1_000_003 + job["batch"])
    res = job["suite"].run(
        job["model"],
        job["images"].to(dev),
        job["labels"].to(dev),
        job["radii"],
        threat=job["threat"],
        seed=job["seed"],
        indices=job["indices"],
        exact_fraction=job["exact_fraction"],
        progress=job["progress"],
    )
    save_batch(job["path"], res, job["images"], job["config_hash"], time.perf_counter() - start)
    return job["batch"]


# ---------------------------------------------------------------------------- worker processes


def _watch_parent(parent_pid: int, interval: float = 0.5) -> None:
    while os.getppid() == parent_pid:
        time.sleep(interval)
    os._exit(1)


def _die_with_parent(parent_pid: int) -> None:
    """End this worker as soon as ``parent_pid`` dies, even by ``kill -9`` (no cleanup runs there).

    A pool worker otherwise outlives a killed parent: it finishes its batch and then waits forever on
    the task queue, whose write end it holds itself. Linux delivers SIGKILL on the parent's death
    (``PR_SET_PDEATHSIG``); elsewhere a daemon thread polls the parent id.
    """
    if sys.platform.startswith("linux"):
        try:
            if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) == 0:
                if os.getppid() != parent_pid:  # the parent died before the request took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()


def _worker_init(threads: int, parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore", message="model was in train mode")


def _run_parallel(spec: RunSpec, header: dict, run_dir: Path, todo: list[int], workers: int) -> None:
    """Compute the batches ``todo`` in ``workers`` processes (CPU), each with its share of the threads.

    Each batch is the same computation as in the sequential loop and writes the same state file, so a run
    can be killed and resumed with any number of workers. Processes are spawned (not forked): torch's
    thread pools are not fork-safe.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm.auto import tqdm

    threads = max(1, torch.get_num_threads() // workers)
    ctx = multiprocessing.get_context("spawn")
    bar = tqdm(total=len(todo), desc=f"batches ({workers} workers)", unit="batch", disable=not spec.progress)
    init = (threads, os.getpid())
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=init) as pool:
        jobs = [_batch_job(spec, header, run_dir, k, progress=False) for k in todo]
        futures = [pool.submit(_compute_batch, job) for job in jobs]
        try:
            for fut in as_completed(futures):
                fut.result()
                bar.update(1)
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    bar.close()

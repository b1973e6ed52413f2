"""What a training run shows: the per-epoch log (JSON, atomic), the curves (PNG) and optional wandb.

Only the main rank writes. Nothing here affects the weights: a resumed run rewrites the same files.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .._util import save_png, write_json

__all__ = ["TrainingLog", "plot_training_curves"]


def plot_training_curves(rows: list[dict], path: str | Path, title: str = "adversarial training") -> Path:
    """PNG of clean / adversarial train accuracy and loss against epoch, with the radius eps (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(9, 3.5))
    acc.plot(epochs, [r["clean_accuracy"] for r in rows], marker="o", label="clean (train)")
    acc.plot(epochs, [r["adversarial_accuracy"] for r in rows], marker="o", label="adversarial (train)")
    acc.set_ylim(-0.02, 1.02)
    acc.set_xlabel("epoch")
    acc.set_ylabel("accuracy")
    acc.legend(fontsize=7)
    acc.grid(alpha=0.3)
    loss.plot(epochs, [r["loss"] for r in rows], marker="o", color="black", label="training loss")
    loss.set_xlabel("epoch")
    loss.set_ylabel("loss (per example)")
    radius = loss.twinx()
    radius.plot(epochs, [r["eps"] for r in rows], ls="--", color="tab:red", label="eps (end of epoch)")
    radius.set_ylabel("eps (units of the threat model)", color="tab:red")
    loss.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_png(fig, path)
    return Path(path)


class TrainingLog:
    """Writes ``train_log.json`` and ``curves.png`` in ``out_dir`` after every epoch; logs to wandb.

    Args:
        out_dir: the run folder.
        config: JSON-ready configuration, recorded in the log and in wandb's run config.
        logger: ``None`` or ``{"kind": "none"}`` (files only), or the ``logger=wandb`` config
            (``project``, ``entity``, ``mode`` (default offline; ``$WANDB_MODE`` wins), ``tags``).
        enabled: False on ranks other than the main one (then nothing is written).

    """

    def __init__(self, out_dir: str | Path, config: dict, logger: dict | None = None, enabled: bool = True):
        self.out_dir, self.config, self.enabled = Path(out_dir), config, enabled
        self.logger = dict(logger or {})
        self._run = None

    def write(self, rows: list[dict], logged: int) -> None:
        """Rewrite the files with all ``rows``; send rows ``logged..`` (new this process) to wandb."""
        if not self.enabled:
            return
        write_json(self.out_dir / "train_log.json", {"config": self.config, "epochs": rows})
        if rows:
            title = self.config.get("title", "adversarial training")
            plot_training_curves(rows, self.out_dir / "curves.png", title)
        if self.logger.get("kind") == "wandb":
            run = self._wandb()
            for row in rows[logged:]:
                run.log({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))

    def _wandb(self):
        # One wandb run per run folder: a resumed run continues it (id derived from the folder).
        if self._run is None:
            import wandb

            run_id = hashlib.sha256(str(self.out_dir.resolve()).encode()).hexdigest()[:16]
            self._run = wandb.init(
                project=self.logger.get("project", "wasserstein-attacks"),
                entity=self.logger.get("entity"),
                mode=os.environ.get("WANDB_MODE") or self.logger.get("mode", "offline"),
                dir=str(self.out_dir),
                id=run_id,
                resume="allow",
                config=self.config,
                tags=list(self.logger.get("tags") or []),
                reinit="finish_previous",
            )
        return self._run

    def close(self, summary: dict | None = None) -> None:
        """Finish the wandb run (recording ``summary``), if one was started."""
        if self._run is not None:
            if summary:
                self._run.summary.update(summary)
            self._run.finish()
            self._run = None

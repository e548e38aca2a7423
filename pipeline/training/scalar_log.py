"""Every scalar a training run logs: ``metrics.csv`` (step, tag, value) and TensorBoard; a resumed run drops the rows
logged after its checkpoint."""

from __future__ import annotations

import csv
from pathlib import Path

__all__ = ["ScalarLog"]


class ScalarLog:
    """Every logged scalar goes to ``metrics.csv`` (step, tag, value) and to TensorBoard."""

    def __init__(self, run_dir: Path, *, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.csv_path = run_dir / "metrics.csv"
        if start_step == 0 or not self.csv_path.exists():
            with open(self.csv_path, "w", newline="") as fh:
                csv.writer(fh).writerow(["step", "tag", "value"])
        else:  # resumed: drop rows logged after the checkpoint we resume from
            with open(self.csv_path, newline="") as fh:
                rows = [r for r in csv.reader(fh)]
            keep = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= start_step]
            with open(self.csv_path, "w", newline="") as fh:
                csv.writer(fh).writerows(keep)
        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step if start_step else None)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        with open(self.csv_path, "a", newline="") as fh:
            w = csv.writer(fh)
            for tag, value in scalars.items():
                w.writerow([step, tag, f"{value:.8g}"])
                self.tb.add_scalar(tag, value, step)
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()

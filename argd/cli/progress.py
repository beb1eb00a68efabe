"""Progress display for long commands: one bar per training phase on a terminal, silence elsewhere.

Two feeds share one bar: the engine's `ProgressEvent`s (one-shot `argd cleanse`) and the job bodies the
REST API returns (`argd submit --wait`, `argd demo`). Logs and pipes get no bar: carriage-return noise in
a CI log helps nobody, and the final summary is printed anyway.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TextIO

from tqdm import tqdm

PHASE_LABELS = {
    "backdoor": "backdoor",
    "teacher": "teacher ",
    "distill": "distill ",
    "evaluate": "evaluate",
    "queued": "queued  ",
}
_BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar:28}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"


def bar_enabled(quiet: bool = False, stream: TextIO | None = None) -> bool:
    """Bars only on an interactive terminal, and never with --quiet."""
    stream = stream if stream is not None else sys.stderr
    if quiet:
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class PhaseBar:
    """A progress bar that restarts for each phase; a no-op when disabled."""

    def __init__(self, enabled: bool, stream: TextIO | None = None, unit: str = "step"):
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.unit = unit
        self._bar: tqdm | None = None
        self._phase: str | None = None

    def update(self, phase: str, done: float, total: float, postfix: str | None = None) -> None:
        """Show `done` of `total` for `phase`; a new phase closes the previous bar and opens a fresh one."""
        if not self.enabled:
            return
        total = max(total, 1)
        if phase != self._phase or self._bar is None or self._bar.total != total:
            self._close_bar()
            self._phase = phase
            self._bar = tqdm(
                total=total,
                desc=PHASE_LABELS.get(phase, phase),
                unit=self.unit,
                file=self.stream,
                bar_format=_BAR_FORMAT,
                dynamic_ncols=True,
                leave=True,
            )
        bar = self._bar
        bar.n = min(max(done, 0), total)
        if postfix is not None:
            bar.set_postfix_str(postfix, refresh=False)
        bar.refresh()

    def write(self, line: str) -> None:
        """Print a line without tearing the bar (or plainly, when there is no bar)."""
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        self._close_bar()
        self._phase = None

    def __enter__(self) -> PhaseBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def engine_progress(bar: PhaseBar) -> Callable[[Any], None]:
    """A `progress=` callback for `run_cleanse` that drives `bar` batch by batch.

    Epochs and batches are taken as counted from 1 when they reach the total and from 0 otherwise; the
    bar clamps, so either convention shows a monotone bar that ends full.
    """

    def on_event(event: Any) -> None:
        phase = str(getattr(event, "phase", "") or "")
        epochs = int(getattr(event, "epochs", 0) or 0)
        epoch = int(getattr(event, "epoch", 0) or 0)
        batches = int(getattr(event, "batches", 0) or 0)
        batch = int(getattr(event, "batch", 0) or 0)
        if epochs <= 0:
            return
        per_epoch = max(batches, 1)
        epoch0 = min(max(epoch - 1, 0), epochs - 1) if epoch >= 1 else 0
        if getattr(event, "end_of_epoch", False):
            done = (epoch0 + 1) * per_epoch
        else:
            done = epoch0 * per_epoch + min(batch, per_epoch)
        postfix = f"epoch {epoch0 + 1}/{epochs}"
        losses = format_losses(getattr(event, "losses", None))
        bar.update(phase, done, epochs * per_epoch, f"{postfix} {losses}" if losses else postfix)

    return on_event


def job_progress(bar: PhaseBar) -> Callable[[dict[str, Any]], None]:
    """An `on_progress=` callback for `ArgdClient.wait` that follows the job's phase and epoch."""

    def on_job(job: dict[str, Any]) -> None:
        status = job.get("status")
        if status == "queued":
            bar.update("queued", 0, 1, "waiting for a worker")
            return
        progress = job.get("progress") or {}
        phase = job.get("phase") or status or "running"
        epochs = progress.get("epochs") or 0
        epoch = progress.get("epoch") or 0
        if epochs:
            postfix = f"epoch {epoch}/{epochs}"
            eta = progress.get("eta_s", progress.get("eta"))
            if eta is not None:
                postfix += f", eta {format_seconds(eta)}"
            bar.update(phase, int(epoch), int(epochs), postfix)
        elif progress.get("fraction") is not None:
            bar.update(phase, round(float(progress["fraction"]) * 100), 100)

    return on_job


def format_losses(losses: dict[str, float] | None) -> str | None:
    """Compact `ce=0.41 node=0.02` text for the bar's tail; terms that are exactly 0 (off) are left out."""
    shown = {name: value for name, value in (losses or {}).items() if value != 0}
    if not shown:
        return None
    return " ".join(f"{name}={value:.3g}" for name, value in shown.items())


def format_seconds(value: Any) -> str:
    """`eta` is seconds in the API; show 75 as 1m15s. Non-numbers pass through unchanged."""
    try:
        seconds = int(float(value))
    except (TypeError, ValueError):
        return str(value)
    minutes, seconds = divmod(max(seconds, 0), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"

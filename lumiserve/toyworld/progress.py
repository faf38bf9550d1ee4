"""A rich progress bar shared by the toy-world trainers (steps, loss, elapsed, remaining)."""

from __future__ import annotations

from collections.abc import Callable

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def make_progress(enabled: bool = True) -> Progress:
    """A ``Progress`` whose tasks carry a ``loss`` field; ``enabled=False`` draws nothing."""
    return Progress(
        TextColumn("[bold]{task.description:<8}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def ticker(
    prog: Progress, task: object, log: Callable[[str], None], every: int = 500
) -> Callable[[float], None]:
    """Callback advancing ``task`` by one step with its loss; also logs a line every ``every`` steps
    (progress bars do not refresh when the output is not a terminal, e.g. a log file)."""
    state = {"step": 0, "run": 0.0}

    def tick(loss: float) -> None:
        state["step"] += 1
        state["run"] = loss if state["step"] == 1 else 0.98 * state["run"] + 0.02 * loss
        prog.update(task, advance=1, loss=loss)  # type: ignore[arg-type]
        if state["step"] % every == 0:
            desc = prog.tasks[-1].description if prog.tasks else ""
            elapsed = prog.tasks[-1].elapsed if prog.tasks else 0.0
            log(f"{desc} step {state['step']} loss(avg) {state['run']:.4f} elapsed {elapsed or 0.0:.0f}s")

    return tick

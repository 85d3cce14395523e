"""Live progress of a fit: one bar per restart, updated once per iteration.

``tqdm.auto`` picks a widget in Jupyter (it needs ipywidgets) and a text bar
on a terminal. Each update is a few microseconds of client-side work after a
round that takes milliseconds to minutes, so it does not slow iterations.
"""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm


class FitProgress:
    """Bars for ``n_restarts`` restarts of at most ``max_iter`` iterations each."""

    def __init__(self, n_restarts: int, max_iter: int, *, file: Any = None) -> None:
        self.bars = [
            tqdm(
                total=max_iter,
                desc=f"restart {i}",
                unit="iter",
                position=i,
                leave=True,
                file=file,
                dynamic_ncols=True,
            )
            for i in range(n_restarts)
        ]

    def update(self, event: dict) -> None:
        """Advance one restart's bar by an iteration (``event`` as fit's callback gets it).

        The iteration's own figures are set before the bar moves (moving it may draw it), and a restart's
        last iteration is drawn once.
        """
        bar = self.bars[event["restart"]]
        change = "first" if event["change"] is None else f"{event['change']:+.2e}"
        bar.set_postfix(lower_bound=f"{event['lower_bound']:.6f}", change=change, refresh=False)
        done = event["converged"] or event["failed"]
        if event["converged"]:
            # A bar closed short of its total is drawn red (tqdm's "danger") in Jupyter:
            # a converged restart ends here, so this is its total.
            bar.total = event["iteration"]
        if done:
            bar.set_description(f"restart {event['restart']} " + ("converged" if event["converged"] else "failed"),
                                refresh=False)
        drawn = bar.update(event["iteration"] - bar.n)
        if done and not drawn:
            bar.refresh()

    def close(self) -> None:
        for bar in self.bars:
            bar.close()

    def __enter__(self) -> "FitProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

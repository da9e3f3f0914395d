"""A progress bar on stderr for long work; silent when stderr is not a terminal."""

from __future__ import annotations

import sys


class Progress:
    def __init__(self, total: int, desc: str, unit: str = "it", enabled: bool = True):
        self._bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False)

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()

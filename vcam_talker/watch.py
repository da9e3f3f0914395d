"""Watching files (config.yaml, the avatar image) with watchdog, debounced.

Editors save in many ways: write in place, several partial writes, write a temp file and
rename it over the original. All of them end in one callback, fired once the files have
been quiet for ``quiet_s``. The parent folder is watched, not the file, so a rename over
the file is seen and the watch survives it.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

log = logging.getLogger(__name__)


class DebouncedWatcher:
    def __init__(self, callback, quiet_s: float = 0.4):
        from watchdog.observers import Observer

        self.callback = callback
        self.quiet_s = quiet_s
        self._paths: dict[str, Path] = {}  # tag -> file
        self._watched_dirs: set[Path] = set()
        self._observer = Observer()
        self._observer.name = "vcam-watch"
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def watch(self, path: Path, replace_tag: str | None = None) -> None:
        """Watch ``path``; a tag replaces the file watched under that tag (the avatar)."""
        from watchdog.events import FileSystemEventHandler

        path = Path(path).resolve()
        with self._lock:
            self._paths[replace_tag or str(path)] = path
        folder = path.parent
        if folder in self._watched_dirs or not folder.is_dir():
            return
        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                if event.event_type in ("opened", "closed_no_write"):
                    return
                paths = {Path(p).resolve() for p in (event.src_path, getattr(event, "dest_path", "")) if p}
                with watcher._lock:
                    hit = bool(paths & set(watcher._paths.values()))
                if hit:
                    watcher._poke()

        self._observer.schedule(Handler(), str(folder), recursive=False)
        self._watched_dirs.add(folder)

    def _poke(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(self.quiet_s, self.callback)
            self._timer.name = "vcam-watch-debounce"
            self._timer.daemon = True
            self._timer.start()

    def start(self) -> None:
        self._observer.daemon = True
        self._observer.start()

    def stop(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
        self._observer.stop()
        self._observer.join(timeout=1.0)

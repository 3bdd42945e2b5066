"""One trace file, read and inflated on a thread while the importer's modules load (`TracePreload`).

This module imports nothing heavy, so `gpuwatch import` starts the thread before it imports the importer:
the inflater (ISA-L or zlib) releases the GIL, and the file is inflated by the time numpy, msgspec and the
parser are loaded. Started from `trace_import`, after those modules' own imports, the 0.1 s inflate of HTA's
216k-event trace ended 20-40 ms after the parser was ready, and the split read waited for it."""

from __future__ import annotations

import threading
from pathlib import Path


class TracePreload:
    """The JSON bytes of the one trace file named, read on a daemon thread (`start`), handed over by `result`.
    Anything that goes wrong is left to the importer, which reads the file again and reports it."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: bytes | bytearray | None = None
        self.thread: threading.Thread | None = None
        if path is not None:
            self.thread = threading.Thread(target=self._read, name="gpuwatch-import-read", daemon=True)
            self.thread.start()

    @classmethod
    def start(cls, paths: list[str]) -> TracePreload:
        """Preload `paths[0]` when it is the only path and a file (a directory or several files: nothing)."""
        path = Path(paths[0]) if len(paths) == 1 else None
        try:
            return cls(path if path is not None and path.is_file() else None)
        except RuntimeError:  # no thread to be had: the importer reads it
            return cls(None)

    def _read(self) -> None:
        from collectors.kineto.trace_bytes import read_trace_bytes

        try:
            self.data = read_trace_bytes(self.path)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - reported by the importer's own read
            self.data = None

    def result(self) -> dict[Path, bytes | bytearray]:
        """{path: its JSON bytes}, or {} (joined: no thread of ours runs when the import forks)."""
        if self.thread is not None:
            self.thread.join()
        data, self.data = self.data, None  # the importer's alone from here: freed once it is parsed
        return {self.path: data} if self.path is not None and data is not None else {}

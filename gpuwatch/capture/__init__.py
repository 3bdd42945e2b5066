"""Capture: what turns a source into a run — the in-process watch, user spans, attach and trace import. The
only place in `gpuwatch/` that imports `collectors/`; it writes through `gpuwatch.store` and may use
`gpuwatch.attribution` (import stores the summary it computes)."""

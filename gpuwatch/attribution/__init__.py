"""Attribution: turns a run's spans into the time budget (intervals, budget, HTA's temporal view, the
TensorBoard plugin's Overview, cross-rank waits, recommendations) and the typed `Summary` every view
renders. It reads runs through `gpuwatch.store` and may import nothing above it (capture, cli, tui) nor any
collector."""

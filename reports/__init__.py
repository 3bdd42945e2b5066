"""Reports: consumers of a typed `Summary` and of the store's time series — the terminal tables, the HTML
report (`html/`), compare/CI formats, exporters next. They may import `gpuwatch.attribution`,
`gpuwatch.store` and `gpuwatch.records`, never `collectors`, `gpuwatch.capture`, `gpuwatch.tui` or
`gpuwatch.cli`."""

"""The live dashboard (`gpuwatch top`, Textual). A view: it reads runs through `gpuwatch.store` and renders
`gpuwatch.attribution` Summaries; with `reports/` it is the only place that imports textual."""

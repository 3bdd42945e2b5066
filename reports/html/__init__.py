"""`gpuwatch report`: one self-contained, offline HTML file per run (or per pair of runs, with deltas).

`report_data` gathers what the page shows from the store (the typed Summary, time series, the spans of a few
representative steps), `figures` turns that into plotly figure dicts (plain data: the golden tests check
them), `page` writes the HTML with plotly.js inline and every name from a trace escaped. Imports
`gpuwatch.attribution`, `gpuwatch.store` and `gpuwatch.records`, never collectors, capture, tui or cli;
plotly is imported only to inline plotly.js.
"""

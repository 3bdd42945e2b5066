"""The store: the run directory (layout, markers), the per-process segment writer, the DuckDB reader and the
summary cache. It may import only `gpuwatch.records` and `gpuwatch.errors`."""

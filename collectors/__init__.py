"""Collectors: the producers of records, one folder per source (hooks/ in-process, system/ NVML and /proc,
pyspy/ for attach, kineto/ for profiler traces), plus `base` (the collector interface and the paced sampler
loop) and `stack_rules` (shared by the in-process stack sampler and attach). They import only
`gpuwatch.records` and `gpuwatch.errors`: never the store, attribution or a view."""

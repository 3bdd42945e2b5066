"""System samplers: NVML (per device and per process, and NVML busy spans for attach) and /proc counters of a
process tree. They import only `gpuwatch.records`, `gpuwatch.errors` and other collectors."""

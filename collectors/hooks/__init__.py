"""In-process collectors installed by `gpuwatch.watch`: torch hooks (DataLoader, forward/backward, optimizer),
collectives, checkpoints, device copies and timing, the stack sampler and profiler windows. They import only
`gpuwatch.records`, `gpuwatch.errors` and other collectors."""

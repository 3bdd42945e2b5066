"""PyTorch profiler (Kineto) Chrome traces decoded into span columns, and the rules that give each event its
kind and category. Imports only `gpuwatch.records`, `gpuwatch.errors` and other collectors."""

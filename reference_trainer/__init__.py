"""The reference trainer: a small video diffusion transformer that reproduces every cause of accelerator idle
time and every fix, trained under `gpuwatch.watch` using only gpuwatch's public API.

`python -m reference_trainer --preset {naive,fixed} --nproc 2 --steps 40 --run-dir DIR`,
`python -m reference_trainer.ablation`, `python -m reference_trainer.demo`.
"""

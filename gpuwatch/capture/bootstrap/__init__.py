"""The folder `gpuwatch run` puts first on the job's PYTHONPATH (its `sitecustomize.py` is what Python loads);
a package only so that it ships with gpuwatch. Nothing imports it as `gpuwatch.capture.bootstrap`."""

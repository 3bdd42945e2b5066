"""`gpuwatch run` puts this file's folder first on PYTHONPATH, so every Python process of the job imports it at
start-up, through the interpreter's own `site` mechanism: no file of the user is touched.

It hands over to `gpuwatch.capture.run_child.install` (which decides whether this process trains and is
watched), then runs the `sitecustomize` this one hides, if there is one (a distribution's or the user's),
exactly as Python would have. Outside `gpuwatch run` (no GPUWATCH_RUN_OPTIONS) it does nothing else.
"""

import os
import sys


def _gpuwatch_run() -> None:
    if "GPUWATCH_RUN_OPTIONS" not in os.environ:
        return
    try:
        from gpuwatch.capture.run_child import install
    except Exception as exc:  # another Python than gpuwatch's: the launcher said so before starting
        if os.environ.get("GPUWATCH_DEBUG"):
            print(f"gpuwatch run: not watching {sys.executable} ({exc})", file=sys.stderr)
        return
    install()


def _chain() -> None:
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    path = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


_gpuwatch_run()
_chain()

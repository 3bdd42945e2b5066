"""`gpuwatch run` puts this file's folder first on PYTHONPATH, so every Python process of the job imports it at
start-up, through the interpreter's own `site` mechanism: no file of the user is touched.

It costs a process next to nothing: it only leaves a finder on `sys.meta_path` that waits for `torch` (or
gpuwatch's own watch module) to finish loading and then hands over to `gpuwatch.capture.run_child.loaded`,
which decides whether this process trains and is watched. A process that never imports torch never
imports gpuwatch. Then it runs the `sitecustomize` this one hides, if there is one (a distribution's or
the user's), exactly as Python would have. Outside `gpuwatch run` (no GPUWATCH_RUN_OPTIONS in the
environment), or in a descendant of a watched process (GPUWATCH_RUN_WATCHED_PID: DataLoader workers,
helpers), it installs nothing.
"""

import os
import sys


class _AfterImport:
    """Calls `run_child.loaded(name, module)` once each awaited module has finished loading."""

    def __init__(self, names):
        self.waiting = set(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.waiting:
            return None
        for finder in sys.meta_path:  # the spec the import would have found without us
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        else:
            return None
        loader = spec.loader
        exec_module = getattr(loader, "exec_module", None)
        if exec_module is None:
            return spec

        # on this spec's own loader: a `find_spec` without an import (is torch installed?) leaves no trace
        def exec_then_hand_over(module):
            exec_module(module)
            try:
                delattr(loader, "exec_module")  # the class's own again
            except AttributeError:
                pass
            if fullname not in self.waiting:
                return
            self.waiting.discard(fullname)
            if not self.waiting and self in sys.meta_path:
                sys.meta_path.remove(self)
            try:
                from gpuwatch.capture.run_child import loaded
            except Exception as exc:  # another Python than gpuwatch's: the launcher said so before starting
                if os.environ.get("GPUWATCH_DEBUG"):
                    print(f"gpuwatch run: not watching {sys.executable} ({exc})", file=sys.stderr)
                return
            loaded(fullname, module)

        setattr(loader, "exec_module", exec_then_hand_over)  # noqa: B010 (an instance attribute, on purpose)
        return spec


# the names are run_child.ENV_OPTIONS and ENV_WATCHED (not imported: this file must not load gpuwatch)
if "GPUWATCH_RUN_OPTIONS" in os.environ and not os.environ.get("GPUWATCH_RUN_WATCHED_PID"):
    sys.meta_path.insert(0, _AfterImport(("torch", "gpuwatch.capture.watch")))


def _chain():
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


_chain()

"""Entry file of every worker process, run with runpy.run_path (so the spawn target is importable anywhere).

Inside ComfyUI the pack is imported under a module name made from its folder path, which a fresh process
cannot import, and putting the pack root on sys.path would clash with ComfyUI's own top-level names. So
the child registers the engine folder under one unique name and imports the worker from there. This
file uses no relative imports: it runs before the package exists in the child.
"""

import importlib
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

ENGINE_MODULE = "video_infinity_engine"


def register_engine(folder: Path, name: str = ENGINE_MODULE) -> None:
    if name in sys.modules:
        return
    init = folder / "__init__.py"
    if init.exists():
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(folder)])
    else:
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(folder)]
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    if spec.loader is not None:
        spec.loader.exec_module(module)


def run(args: dict) -> None:
    register_engine(Path(__file__).resolve().parent.parent)
    importlib.import_module(f"{ENGINE_MODULE}.pool.worker").main(args)


if __name__ == "video_infinity_bootstrap":
    run(globals()["WORKER_ARGS"])

"""What the installed ``lavis_xformer_hook.pth`` runs at interpreter start-up.

A ``.pth`` file can only run a line that starts with ``import``; this module is that line's
body: it finds ``lavis_xformer/_hook.py`` through the import system's finders (editable
installs included), runs it as ``lavis_xformer._hook`` WITHOUT running
``lavis_xformer/__init__.py`` (which imports LAVIS and torch), and calls its ``install()``.
Importing this module does nothing else; :func:`run` is the whole hook, and the GPU machine's
start-up (``bench/device/boot/sitecustomize.py``) calls the same function.

It imports only what start-up has loaded anyway (``os``, ``sys``, the frozen import system).
``LAVIS_XFORMER_NO_HOOK=1`` switches it off. A failure is one line on stderr, never an
exception: a broken plugin must not stop every Python program of the environment.
"""
import os
import sys

HOOK = "lavis_xformer._hook"


def _load_hook():
    """The ``lavis_xformer._hook`` module, executed from its file; None if not installed."""
    try:  # the import system's own classes, loaded at start-up: importing them costs nothing
        from _frozen_importlib import ModuleSpec
        from _frozen_importlib_external import SourceFileLoader
    except ImportError:  # pragma: no cover  (not CPython)
        from importlib.machinery import ModuleSpec, SourceFileLoader
    for finder in sys.meta_path:
        find = getattr(finder, "find_spec", None)
        package = find("lavis_xformer", None) if find is not None else None
        if package is not None:
            break
    else:
        return None
    if not package.submodule_search_locations:
        return None
    path = os.path.join(list(package.submodule_search_locations)[0], "_hook.py")
    loader = SourceFileLoader(HOOK, path)
    spec = ModuleSpec(HOOK, loader, origin=path)
    spec.has_location = True
    module = type(sys)(HOOK)
    module.__spec__, module.__loader__, module.__file__ = spec, loader, path
    module.__package__ = "lavis_xformer"
    sys.modules[HOOK] = module
    loader.exec_module(module)
    return module


def run():
    """Install the plugin's import hook (``lavis_xformer/_hook.py``), unless switched off."""
    if os.environ.get("LAVIS_XFORMER_NO_HOOK", "") not in ("", "0"):
        return
    try:
        hook = _load_hook()
        if hook is not None:
            hook.install()
    except Exception as exc:
        sys.modules.pop(HOOK, None)
        sys.stderr.write("lavis_xformer: start-up hook not installed (%s: %s)\n" % (type(exc).__name__, exc))

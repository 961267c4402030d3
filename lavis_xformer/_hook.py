"""Start-up import hook that plugs lavis_xformer into Salesforce LAVIS 1.0.2.

LAVIS has no plugin discovery, and its wheel ships no ``lavis/train.py`` or
``lavis/evaluate.py``. The installed file ``lavis_xformer_hook.pth`` runs this module at
interpreter start-up (the pattern of pytest-cov and pytest-socket; the line calls
``lavis_xformer_startup.run``, which loads this file without the package's ``__init__``) and calls :func:`install`,
which puts one finder at the front of ``sys.meta_path``. The finder acts on five names only:

``lavis``
    loaded as usual, then ``lavis_xformer`` is imported right after ``lavis/__init__.py`` has
    run, so ``load_model("xformer", ...)``, ``load_model_and_preprocess`` and LAVIS's own
    ``train.py``/``evaluate.py`` see the plugin's registrations after a bare ``import lavis``.
``lavis_xformer``
    loaded as usual, then ``lavis.models.model_zoo`` (a snapshot LAVIS takes when
    ``lavis.models`` is imported) is rebuilt so that it lists the plugin's models too.
``lavis.train`` / ``lavis.evaluate``
    aliases of ``lavis_xformer.train`` / ``lavis_xformer.evaluate``: ``import lavis.train``
    gives the very same module object, and ``python -m lavis.train`` (hence
    ``torchrun -m lavis.train``) executes that module's code as ``__main__``.

``transformers``
    loaded as usual, but first its table of import-time version checks is loaded without the
    ``tokenizers<0.14`` pin of transformers 4.26 (see :func:`relax_tokenizers_pin`), so that
    transformers 4.26.1 imports beside a tokenizers that installs on Python >= 3.12. A
    one-line notice says so; ``LAVIS_XFORMER_KEEP_TOKENIZERS_PIN=1`` keeps the pin.

Set ``LAVIS_XFORMER_NO_HOOK=1`` in the environment to switch all of it off (checked by the
``.pth`` line and by :func:`install`); then ``lavis`` is stock LAVIS 1.0.2 and
``python -m lavis.train`` fails with "No module named lavis.train".

This module runs in every start-up of the interpreter it is installed in: it imports only
modules loaded at start-up anyway (``os``, ``sys``, the import system's frozen bootstrap;
not even ``importlib``) and defers everything else to the moment one of the four names above
(or ``transformers``) is imported. Cost: about 1 ms with its bytecode cached (measured by tests/test_packaging.py).
"""
import os
import sys

try:  # the import system's own classes, loaded at start-up: importing them costs nothing
    from _frozen_importlib import ModuleSpec
except ImportError:  # pragma: no cover  (not CPython)
    from importlib.machinery import ModuleSpec

ENV_SWITCH = "LAVIS_XFORMER_NO_HOOK"
KEEP_PIN_SWITCH = "LAVIS_XFORMER_KEEP_TOKENIZERS_PIN"

# Module of LAVIS -> module of this plugin that provides it.
ALIASES = {
    "lavis.train": "lavis_xformer.train",
    "lavis.evaluate": "lavis_xformer.evaluate",
}


def disabled() -> bool:
    """True when the environment switches the hook off (any value but '', '0')."""
    return os.environ.get(ENV_SWITCH, "") not in ("", "0")


class _AliasSpec(ModuleSpec):
    """Spec of an alias whose ``parent`` is the target's package.

    ``python -m lavis.train`` runs the code with ``__package__ = spec.parent``; naming the
    target's package there keeps relative imports inside the target module working.
    """

    def __init__(self, name, loader, origin, target_parent):
        super().__init__(name, loader, origin=origin)
        self.has_location = origin is not None
        self._target_parent = target_parent

    @property
    def parent(self):
        return self._target_parent


class _AliasLoader:
    """Loader of ``lavis.train``-style aliases.

    Import: the alias resolves to the target module object itself (no second copy).
    ``runpy`` (``-m``): :meth:`get_code` hands over the target's code, which runpy runs as
    ``__main__``, exactly as ``python -m lavis_xformer.train`` would.
    """

    def __init__(self, target, target_spec):
        self.target = target
        self.target_spec = target_spec
        self._saved_spec = None

    def create_module(self, spec):
        import importlib

        module = importlib.import_module(self.target)
        self._saved_spec = module.__spec__
        return module

    def exec_module(self, module):
        # importlib overwrote __spec__ with the alias spec; the target keeps its own.
        if self._saved_spec is not None:
            module.__spec__ = self._saved_spec

    def get_code(self, fullname):
        return self.target_spec.loader.get_code(self.target)

    def get_source(self, fullname):
        return self.target_spec.loader.get_source(self.target)

    def get_filename(self, fullname):
        return self.target_spec.origin

    def is_package(self, fullname):
        return False


class _AfterExecLoader:
    """Wraps a real loader; runs ``after(module)`` once the module's code has executed.

    The real loader is put back on the module and its spec before the code runs, so the
    module never sees the wrapper.
    """

    def __init__(self, loader, after):
        self._loader = loader
        self._after = after

    def create_module(self, spec):
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module):
        module.__loader__ = self._loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        self._after(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


def _after_lavis(module):
    """Import the plugin right after ``lavis/__init__.py`` has run."""
    if "lavis_xformer" in sys.modules:
        # Either already imported, or it is being imported and is what imported lavis;
        # in both cases its own import finishes the registrations.
        return
    import importlib

    try:
        importlib.import_module("lavis_xformer")
    except Exception as exc:
        raise ImportError(
            "importing lavis_xformer after lavis failed (%s: %s); set %s=1 to use LAVIS "
            "without the X-Former plugin" % (type(exc).__name__, exc, ENV_SWITCH),
            name="lavis_xformer",
        ) from exc


def refresh_model_zoo():
    """Rebuild ``lavis.models.model_zoo`` from the registry (LAVIS takes it once, at import)."""
    models = sys.modules.get("lavis.models")
    zoo = getattr(models, "model_zoo", None)
    if zoo is None or not hasattr(zoo, "model_zoo"):
        return
    from lavis.common.registry import registry

    zoo.model_zoo = {
        name: list(getattr(cls, "PRETRAINED_MODEL_CONFIG_DICT", {}).keys())
        for name, cls in registry.mapping["model_name_mapping"].items()
    }


def _after_lavis_xformer(module):
    module._hook = sys.modules.get(__name__)
    refresh_model_zoo()


_AFTER = {"lavis": _after_lavis, "lavis_xformer": _after_lavis_xformer}


# --- transformers 4.26's tokenizers pin. Its metadata and its import-time check
# (transformers/dependency_versions_check.py, against dependency_versions_table.deps) ask for
# tokenizers<0.14; no such release has a wheel for Python >= 3.12 and building one needs
# network access. The plugin needs transformers 4.26 (LAVIS 1.0.2's generation code), and its
# vocabularies (BERT WordPiece, GPT-2 BPE) tokenise identically with today's tokenizers
# (tests/test_tokenizers_compat.py against ids from tokenizers 0.13). So the check is made to
# accept the installed tokenizers: nothing else in transformers changes.
TOKENIZERS_PIN = "<0.14"
_decided = []  # [result of relax_tokenizers_pin] once decided in this process
_busy = []  # non-empty while deciding


def _version_tuple(version):
    parts = []
    for part in version.split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit()) or "0"
        parts.append(int(digits))
    return tuple(parts)


def relax_tokenizers_pin(transformers_dirs=None):
    """Make transformers' import-time check accept a tokenizers >= 0.14 (4.26 pins < 0.14).

    Loads ``transformers.dependency_versions_table`` ahead of ``transformers`` (or edits it
    if already loaded) with the ``<0.14`` bound removed, and prints one line to stderr. Does
    nothing when ``LAVIS_XFORMER_KEEP_TOKENIZERS_PIN`` is set (not '' or '0'), when
    tokenizers is not installed or older than 0.14, or when the installed transformers does
    not pin it. Returns the relaxed requirement's old text, or None.
    """
    if os.environ.get(KEEP_PIN_SWITCH, "") not in ("", "0"):
        return None
    if not _decided:
        if _busy:  # find_spec("transformers") below passes through this module's finder
            return None
        _busy.append(True)
        try:
            _decided.append(_relax(transformers_dirs))
        finally:
            _busy.clear()
    return _decided[0]


def _relax(transformers_dirs):
    import importlib.metadata
    import importlib.util

    try:
        installed = importlib.metadata.version("tokenizers")
    except importlib.metadata.PackageNotFoundError:
        return None  # transformers checks tokenizers only when it is installed
    if _version_tuple(installed) < (0, 14):
        return None
    name = "transformers.dependency_versions_table"
    table = sys.modules.get(name)
    if table is None:
        if transformers_dirs is None:
            spec = importlib.util.find_spec("transformers")
            transformers_dirs = spec.submodule_search_locations if spec is not None else None
        table = sys.modules.get(name)  # the look-up may have passed through the finder
    if table is None:
        path = os.path.join(list(transformers_dirs or [""])[0], "dependency_versions_table.py")
        if not os.path.isfile(path):
            return None
        spec = importlib.util.spec_from_file_location(name, path)
        table = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(table)
    # The marker lives on the table, not in this module: site runs a venv's .pth files twice
    # (once from site.venv(), once from site.main()), so this module can exist twice in one
    # process, the finder's copy and the one in sys.modules; the notice must still come once.
    done = getattr(table, "_lavis_xformer_relaxed_from", None)
    if done is not None:
        return done
    requirement = getattr(table, "deps", {}).get("tokenizers", "")
    if TOKENIZERS_PIN not in requirement:
        return None  # a transformers that does not pin tokenizers below 0.14: leave it be
    relaxed = ",".join(p for p in requirement.split(",") if not p.strip().startswith("<")) or "tokenizers"
    table.deps["tokenizers"] = relaxed
    table._lavis_xformer_relaxed_from = requirement
    sys.modules[name] = table
    try:
        transformers_version = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        transformers_version = "?"
    sys.stderr.write(
        "lavis_xformer: transformers %s pins %s (no wheel for Python >= 3.12); its import-time "
        "check now accepts the installed tokenizers %s, tested to tokenise the plugin's "
        "vocabularies identically (%s=1 keeps the pin)\n"
        % (transformers_version, requirement, installed, KEEP_PIN_SWITCH))
    return requirement


class LavisXFormerFinder:
    """``sys.meta_path`` finder; see the module docstring. Returns None for every other name."""

    _lavis_xformer_hook = True  # marker: lets install() stay idempotent across copies

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "transformers":
            spec = self._find_elsewhere(fullname, path, target)
            if spec is not None and spec.submodule_search_locations:
                relax_tokenizers_pin(spec.submodule_search_locations)
            return spec
        if fullname in _AFTER:
            spec = self._find_elsewhere(fullname, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _AfterExecLoader(spec.loader, _AFTER[fullname])
            return spec
        if fullname in ALIASES:
            return self._alias_spec(fullname)
        return None

    def _find_elsewhere(self, fullname, path, target):
        for finder in sys.meta_path:
            if getattr(finder, "_lavis_xformer_hook", False):
                continue
            find_spec = getattr(finder, "find_spec", None)
            if find_spec is None:
                continue
            spec = find_spec(fullname, path, target)
            if spec is not None:
                return spec
        return None

    @staticmethod
    def _alias_spec(fullname):
        import importlib.util

        target = ALIASES[fullname]
        try:
            target_spec = importlib.util.find_spec(target)
        except ModuleNotFoundError as exc:
            if exc.name in ("lavis_xformer", target):
                return None  # plugin (or that entry point) not installed: no such module
            raise
        if target_spec is None or target_spec.loader is None:
            return None
        loader = _AliasLoader(target, target_spec)
        return _AliasSpec(fullname, loader, target_spec.origin, target_spec.parent)

    def invalidate_caches(self):
        pass


def install():
    """Put the finder first on ``sys.meta_path``; no-op when disabled or already there."""
    if disabled():
        return None
    for finder in sys.meta_path:
        if getattr(finder, "_lavis_xformer_hook", False):
            return finder
    finder = LavisXFormerFinder()
    sys.meta_path.insert(0, finder)
    return finder


def uninstall():
    """Remove the finder (for tests); modules imported already stay as they are."""
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "_lavis_xformer_hook", False)]

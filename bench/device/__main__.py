"""``python -m bench.device ...``: ``python -m bench`` (or, with ``--module NAME``, another
entry point of this project) on a machine whose Python lacks two of
the packages LAVIS 1.0.2 imports at start-up (see prepare.sh), and may carry a newer
``tokenizers`` than transformers 4.26 accepts.

- ``spacy`` (imported by LAVIS's img2prompt model) and ``pycocoevalcap`` (its captioning
  task) are replaced by modules whose every attribute is a function that raises: the
  benchmark builds neither, and any use fails loudly instead of silently.
- the packages sit on PYTHONPATH there, where the plugin's ``.pth`` is never read, so its
  start-up hook is run here by hand (``lavis_xformer_startup.run``, the ``.pth`` line's body):
  among other things it relaxes transformers 4.26's ``tokenizers<0.14`` pin when the
  installed tokenizers is newer (none < 0.14 exists for Python 3.12).
"""
import importlib.util
import sys
import types


class _Absent(types.ModuleType):
    """A package that is not installed here; using anything from it raises."""

    __path__ = []

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)

        def unavailable(*args, **kwargs):
            raise RuntimeError(f"{self.__name__}.{attr}: {self.__name__} is not installed on this "
                               f"machine (bench/device stands in for it; the benchmark does not use it)")
        return unavailable


STAND_INS = {"spacy": ("spacy",), "pycocoevalcap": ("pycocoevalcap", "pycocoevalcap.eval")}


def install_stand_ins():
    for package, modules in STAND_INS.items():
        if importlib.util.find_spec(package) is None:
            for name in modules:
                sys.modules[name] = _Absent(name)


if __name__ == "__main__":
    import lavis_xformer_startup

    install_stand_ins()
    lavis_xformer_startup.run()
    if len(sys.argv) > 2 and sys.argv[1] == "--module":
        # `python -m bench.device --module lavis_xformer.train --cfg-path ...`: another entry
        # point of this project in the same environment (e.g. a GPU check of the tiny runs).
        import runpy

        module = sys.argv[2]
        sys.argv = [module] + sys.argv[3:]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        from bench.__main__ import main

        main()

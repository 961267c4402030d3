"""Build script: everything declarative is in setup.cfg; this file only ships the start-up hook.

``lavis_xformer_hook.pth`` must land at the top of site-packages, where the interpreter runs
it at start-up (see lavis_xformer/_hook.py for what it does and LAVIS_XFORMER_NO_HOOK to turn
it off; the line only calls ``lavis_xformer_startup.run()``, a top-level module listed in
setup.cfg's ``py_modules``). setuptools has no option for a top-level data file, so, as pytest-cov and
pytest-socket do, two commands are extended:

* ``build_py`` copies the .pth into the build directory: regular wheels and ``pip install .``;
* ``editable_wheel`` writes it into the editable wheel: ``pip install -e .`` (PEP 660).
"""
import os

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = "lavis_xformer_hook.pth"
HERE = os.path.dirname(os.path.abspath(__file__))


class build_py_with_pth(build_py):
    def run(self):
        super().run()
        if not getattr(self, "editable_mode", False):
            self.copy_file(os.path.join(HERE, PTH), os.path.join(self.build_lib, PTH),
                           preserve_mode=0)

    def get_outputs(self, *args, **kwargs):
        outputs = list(super().get_outputs(*args, **kwargs))
        if not getattr(self, "editable_mode", False):
            outputs.append(os.path.join(self.build_lib, PTH))
        return outputs


class editable_wheel_with_pth(editable_wheel):
    # _run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir) fills the folder that
    # becomes the editable wheel (setuptools >= 64); files put there install as they lie.
    def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):
        result = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
        self.copy_file(os.path.join(HERE, PTH), os.path.join(str(unpacked_wheel), PTH),
                       preserve_mode=0)
        return result


setup(cmdclass={"build_py": build_py_with_pth, "editable_wheel": editable_wheel_with_pth})

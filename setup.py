"""Build step: the reference fingerprints (the repository's top-level ``fingerprints/``) are
copied into the wheel as ``mirror/references_data/``, so an installed mirror has them without
relying on a link in the source tree. Everything else is configured in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SOURCE = Path(__file__).resolve().parent / "fingerprints"


class BuildWithReferences(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "mirror" / "references_data"
        target.mkdir(parents=True, exist_ok=True)
        references = sorted(SOURCE.glob("*.json"))
        if not references:
            raise SystemExit(f"no reference fingerprints in {SOURCE}")
        for path in references:
            shutil.copyfile(path, target / path.name)


setup(cmdclass={"build_py": BuildWithReferences})

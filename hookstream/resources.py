"""The files hookstream ships inside its package (package data), found with ``importlib.resources``.

Everything hookstream reads at run time (JSON Schemas and their examples, SQL migrations, the
OpenAPI document, the console's static files) lives under the ``hookstream`` package, so an
installed wheel runs the same as a source checkout. pip installs wheels as files on disk; the
console needs real paths (it streams files with ``sendfile``), so an import from a zip is refused
with a clear error instead of failing later.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Final

PACKAGE: Final[Traversable] = files("hookstream")
SCHEMAS: Final[Traversable] = PACKAGE / "schemas"
MIGRATIONS: Final[Traversable] = SCHEMAS / "sql"
OPENAPI: Final[Traversable] = SCHEMAS / "openapi.json"


def static_dir() -> Path:
    """The console's directory of static files, as a path on disk."""
    static = PACKAGE / "api" / "static"
    if not isinstance(static, Path):
        raise RuntimeError(f"hookstream's package data is not on disk ({static!r}); install the wheel with pip")
    return static

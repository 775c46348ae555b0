"""System programs the tests need from Debian's packages, installed on first use (CI starts bare)."""

import os
import shutil
import subprocess


def apt_install(packages: list[str], programs: list[str]) -> str | None:
    """``apt-get install PACKAGES`` unless every one of ``programs`` is on PATH already; None, or why it failed."""
    if all(shutil.which(p) for p in programs):
        return None
    if os.geteuid() != 0:
        return f"{', '.join(programs)} not installed, and installing needs root and installing it needs root: run `apt-get install -y " \
               f"{' '.join(packages)}` as root, then the tests again"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update"], capture_output=True, text=True, env=env, timeout=900)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0 or not all(shutil.which(p) for p in programs):
        return f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return None

#!/usr/bin/env python3
"""Installs the LLVM 23 that `trainer --features cuda` needs to build, from PyPI.

Why: burn's CUDA backend compiles its kernels through cubecl-llvm (LLVM -> PTX). cubecl-llvm
is a hard dependency of every cubecl-cuda 0.11 release, and its build script
(tracel-llvm-bundler) downloads an LLVM bundle from GitHub releases, which offline machines
and our CI cannot reach. The bundler skips the download when its install folder holds the
marker file `.tracel-llvm-installed`, and then only runs that folder's `bin/llvm-config`.
So this script puts a static LLVM 23 SDK there, taken from two PyPI wheels:

* `mlc-llvm-static==23.1.1.post0`: static LLVM libraries, headers and a stand-alone
  `llvm-config` (Python >= 3.10);
* `mlc-llvm-static-extra-targets==23.1.1.post0`: the NVPTX backend CUDA needs.

Both wheels' SHA-256 are pinned. Their `mlc_llvm_static/static/` trees are unpacked into

    $FEWSTEP_CACHE/llvm-23.1.1/          (FEWSTEP_CACHE: ~/.cache/fewstep)

the marker is written there, and the bundler's folder is made a symbolic link to it:

    $XDG_DATA_HOME/tracel/tracel-llvm-<bundler version>   (XDG_DATA_HOME: ~/.local/share)

A symbolic link, not a copy: when the marker is missing the bundler deletes its folder
before downloading, and that must never delete the SDK. The bundler version comes from
Cargo.lock; the script refuses one it was not written for (a cubecl upgrade may want
another LLVM). Afterwards `cargo build -p trainer --features cuda` builds offline, with no
environment variable. The CUDA driver is loaded at run time (cudarc), so no CUDA toolkit
is needed to build. Run:

    python3 scripts/fetch_llvm.py

It prints one line naming the folder (or a one-line error, exit status 1).
`--wheels DIR` uses already downloaded wheels from DIR (their hashes are still checked).
"""

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

VERSION = "23.1.1.post0"
WHEELS = {
    f"mlc_llvm_static-{VERSION}-py3-none-manylinux_2_28_x86_64.whl":
        "dcfec888abfaa418be77d41af585805f31463584cf9c90582992c00f392c1ac5",
    f"mlc_llvm_static_extra_targets-{VERSION}-py3-none-manylinux_2_28_x86_64.whl":
        "c36e834d9a4e9cf9759f27fece65711ece7a2fc2b5a96dbb15d66f5e9e787929",
}
REQUIREMENTS = [f"mlc-llvm-static=={VERSION}", f"mlc-llvm-static-extra-targets=={VERSION}"]
SDK_PREFIX = "mlc_llvm_static/static/"
BUNDLER = "tracel-llvm-bundler"
BUNDLER_VERSIONS = {"23.1.0-4"}  # LLVM 23; the versions this SDK was checked with
MARKER = ".tracel-llvm-installed"
ROOT = Path(__file__).resolve().parent.parent


class Fail(Exception):
    pass


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def bundler_version():
    lock = (ROOT / "Cargo.lock").read_text()
    marker = f'name = "{BUNDLER}"\nversion = "'
    at = lock.find(marker)
    if at < 0:
        raise Fail(f"Cargo.lock has no {BUNDLER}: the cuda feature no longer needs this script")
    start = at + len(marker)
    return lock[start:lock.index('"', start)]


def download(tmp):
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--platform", "manylinux_2_28_x86_64", "--python-version", "3.10",
           "--disable-pip-version-check", "-q", "-d", tmp, *REQUIREMENTS]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise Fail(f"pip download {' '.join(REQUIREMENTS)} failed (exit {r.returncode}): {last}")
    return Path(tmp)


def unpack(wheel, dest):
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if not info.filename.startswith(SDK_PREFIX) or info.is_dir():
                continue
            rel = Path(info.filename[len(SDK_PREFIX):])
            if rel.is_absolute() or ".." in rel.parts:
                raise Fail(f"{wheel.name}: unsafe member {info.filename}")
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            if (info.external_attr >> 16) & stat.S_IXUSR or rel.parts[0] == "bin":
                out.chmod(0o755)


def main():
    args = sys.argv[1:]
    wheels_arg = None
    if args[:1] == ["--wheels"] and len(args) == 2:
        wheels_arg = Path(args[1])
    elif args:
        sys.exit(__doc__)
    version = bundler_version()
    if version not in BUNDLER_VERSIONS:
        raise Fail(f"Cargo.lock pins {BUNDLER} {version}; this script knows "
                   f"{', '.join(sorted(BUNDLER_VERSIONS))}: check which LLVM it needs")
    cache = Path(os.environ.get("FEWSTEP_CACHE") or Path.home() / ".cache" / "fewstep")
    sdk = cache / "llvm-23.1.1"
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    link = data / "tracel" / f"tracel-llvm-{version}"
    if not (sdk / MARKER).is_file():
        if sdk.exists():
            shutil.rmtree(sdk)  # a half-unpacked SDK from an interrupted run
        with tempfile.TemporaryDirectory(prefix="fewstep-llvm-") as tmp:
            folder = wheels_arg if wheels_arg else download(tmp)
            partial = cache / "llvm-23.1.1.partial"
            if partial.exists():
                shutil.rmtree(partial)
            for name, want in WHEELS.items():
                wheel = folder / name
                if not wheel.is_file():
                    raise Fail(f"{wheel} is missing")
                if sha256_file(wheel) != want:
                    raise Fail(f"{wheel}: sha256 is not the pinned {want}")
                unpack(wheel, partial)
            config = partial / "bin" / "llvm-config"
            r = subprocess.run([sys.executable, str(config), "--targets-built"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            if r.returncode != 0 or "NVPTX" not in r.stdout.split():
                raise Fail(f"the unpacked LLVM does not list NVPTX: {r.stdout.strip()} "
                           f"{r.stderr.strip()}")
            (partial / MARKER).write_text(f"mlc-llvm-static {VERSION} from PyPI\n")
            partial.rename(sdk)
    if link.is_symlink() or link.exists():
        if link.is_symlink() and Path(os.readlink(link)) == sdk:
            print(f"{sdk} (LLVM 23 with NVPTX) is there, linked from {link}")
            return
        if not link.is_symlink():
            raise Fail(f"{link} exists and is not a link made by this script; move it away "
                       f"first (the cuda build would use it)")
        link.unlink()
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(sdk)
    print(f"{sdk} (LLVM 23 with NVPTX) is there, linked from {link}")


if __name__ == "__main__":
    try:
        main()
    except Fail as e:
        sys.exit(f"error: {e}")

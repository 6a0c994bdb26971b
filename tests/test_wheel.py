"""The Python package: wheel and sdist build, and `pipx install .` gives a working binfmtd."""

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

from binfmtd import __version__

from conftest import ROOT, need


def test_wheel_and_sdist_build_and_the_wheel_installs(tmp_path):
    need(shutil.which("python3") is not None, "python3 missing")
    build = subprocess.run([sys.executable, "-m", "build", "--outdir", str(tmp_path / "dist"), str(ROOT)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel, = (tmp_path / "dist").glob(f"binfmtd-{__version__}-py3-none-any.whl")
    sdist, = (tmp_path / "dist").glob(f"binfmtd-{__version__}.tar.gz")
    names = zipfile.ZipFile(wheel).namelist()
    modules = {path.relative_to(ROOT).as_posix() for path in (ROOT / "binfmtd").rglob("*.py")}
    assert {"binfmtd/cli/app.py", "binfmtd/probes/__init__.py", "binfmtd/verify/run.py"} <= modules <= set(names)
    entry_points = zipfile.ZipFile(wheel).read(f"binfmtd-{__version__}.dist-info/entry_points.txt").decode()
    assert "binfmtd = binfmtd.__main__:main" in entry_points
    with tarfile.open(sdist) as tar:
        assert f"binfmtd-{__version__}/README.md" in tar.getnames()
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    subprocess.run([str(tmp_path / "venv/bin/pip"), "install", "-q", str(wheel)], check=True, timeout=600)
    version = subprocess.run([str(tmp_path / "venv/bin/binfmtd"), "--version"], capture_output=True, text=True)
    assert version.stdout.strip() == f"binfmtd {__version__}"


def test_pipx_install_gives_a_working_command(tmp_path):
    env = {**os.environ, "PIPX_HOME": str(tmp_path / "pipx"), "PIPX_BIN_DIR": str(tmp_path / "bin"),
           "PIPX_MAN_DIR": str(tmp_path / "man")}
    done = subprocess.run([sys.executable, "-m", "pipx", "install", str(ROOT)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    targets = subprocess.run([str(tmp_path / "bin" / "binfmtd"), "targets", "--json"], capture_output=True, text=True)
    assert targets.returncode == 0 and "linux/arm64" in targets.stdout
    completion = subprocess.run([str(tmp_path / "bin" / "binfmtd"), "--show-completion", "bash"],
                                capture_output=True, text=True, env={**env, "SHELL": "/bin/bash"})
    assert completion.returncode == 0 and "_BINFMTD_COMPLETE" in completion.stdout

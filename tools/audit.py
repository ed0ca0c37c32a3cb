"""Audit the locked dependencies (requirements.lock) for known vulnerabilities with pip-audit; fail on any that
has a fixed release.

    python tools/audit.py [--lock requirements.lock] [--service pypi|osv] [--osv-url URL]

pip-audit asks its vulnerability service (PyPI's JSON API by default, which serves the OSV advisories of the
Python Packaging Advisory Database; or an OSV server) about each pinned package. This script:

- exits 1 when a locked package has a known vulnerability with a fix available, naming the package, the
  advisory and the first fixed version (upgrade it in the lock, `make lock`);
- prints advisories with no fix yet, without failing (nothing can be done but watch them);
- prints "AUDIT INCOMPLETE" with the count of packages the service could not answer for (a mirror without
  PyPI's per-release JSON, no route to OSV): then it exits 0, unless ``--strict`` (or $SAEKIT_AUDIT_STRICT=1),
  because a build cannot be blamed for an advisory service it cannot reach - but it never says "clean" then.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_pip_audit(lock: Path, service: str, osv_url: str | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "audit.json"
        command = [sys.executable, "-m", "pip_audit", "-r", str(lock), "--no-deps", "--disable-pip",
                   "-s", service, "-f", "json", "-o", str(out), "--progress-spinner", "off"]
        if osv_url:
            command += ["--osv-url", osv_url]
        proc = subprocess.run(command, capture_output=True, text=True)
        if not out.exists():
            raise SystemExit(f"pip-audit did not run (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def judge(report: dict) -> tuple[list[str], list[str], list[str]]:
    """(vulnerabilities with a fix, without one, packages not audited) as printable lines."""
    fixable, unfixed, skipped = [], [], []
    for dep in report.get("dependencies", []):
        name, version = dep.get("name"), dep.get("version")
        if dep.get("skip_reason"):
            skipped.append(dep["skip_reason"])
        for vuln in dep.get("vulns", []):
            line = f"{name} {version}: {vuln['id']}"
            if vuln.get("fix_versions"):
                fixable.append(f"{line} (fixed in {', '.join(vuln['fix_versions'])})")
            else:
                unfixed.append(f"{line} (no fixed release yet)")
    return fixable, unfixed, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lock", type=Path, default=ROOT / "requirements.lock")
    parser.add_argument("--service", choices=("pypi", "osv"), default=os.environ.get("SAEKIT_AUDIT_SERVICE", "pypi"))
    parser.add_argument("--osv-url", default=os.environ.get("SAEKIT_AUDIT_OSV_URL"))
    parser.add_argument("--strict", action="store_true", default=os.environ.get("SAEKIT_AUDIT_STRICT") == "1",
                        help="also fail when some packages could not be audited")
    args = parser.parse_args(argv)
    report = run_pip_audit(args.lock, args.service, args.osv_url)
    fixable, unfixed, skipped = judge(report)
    audited = len(report.get("dependencies", [])) - len(skipped)
    for line in unfixed:
        print(f"warning: {line}")
    for line in fixable:
        print(f"VULNERABLE: {line}")
    if skipped:
        print(f"AUDIT INCOMPLETE: {len(skipped)} of {len(report.get('dependencies', []))} locked packages could not be "
              f"audited by the {args.service} service, e.g. {skipped[0]}")
    print(f"audited {audited} package(s) of {args.lock.name}: {len(fixable)} vulnerable with a fix, "
          f"{len(unfixed)} without one")
    if fixable:
        print("upgrade those packages (the first fixed version or later), then `make lock`")
        return 1
    return 1 if skipped and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())

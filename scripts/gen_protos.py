"""Regenerate the Python stubs for protos/ into lumiserve/<pkg>/v1/, or check they are current.

python scripts/gen_protos.py          # regenerate
python scripts/gen_protos.py --check  # exit 1 if the committed stubs differ from protos/
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.resources
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Runs protoc on every .proto under protos/; returns the generated files relative to out_dir."""
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *sources,
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    return sorted(p.relative_to(out_dir) for p in out_dir.rglob("*") if p.name.endswith(GENERATED_SUFFIXES))


def committed_stubs() -> list[Path]:
    return sorted(
        p.relative_to(ROOT) for p in (ROOT / "lumiserve").rglob("*") if p.name.endswith(GENERATED_SUFFIXES)
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs are stale")
    check = parser.parse_args().check
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        if check:
            stale = sorted(set(fresh) ^ set(committed_stubs()))
            stale += [
                p for p in fresh if (ROOT / p).exists() and not filecmp.cmp(Path(tmp) / p, ROOT / p, False)
            ]
            for path in stale:
                print(f"stale generated stub: {path}", file=sys.stderr)
            if stale:
                print("run: python scripts/gen_protos.py", file=sys.stderr)
            return 1 if stale else 0
        for path in fresh:
            (ROOT / path).parent.mkdir(parents=True, exist_ok=True)
            (ROOT / path).write_bytes((Path(tmp) / path).read_bytes())
            for level in [path.parent, *path.parents][:-1]:  # every level an importable package
                (ROOT / level / "__init__.py").touch()
        print(f"generated {len(fresh)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())

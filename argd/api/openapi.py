"""The committed OpenAPI document: `python -m argd.api.openapi --write` regenerates `openapi.json`,
`--check` fails when it differs from what the app serves (CI and a test run it, so the contract cannot drift
unnoticed).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

OPENAPI_PATH = Path(__file__).resolve().parents[2] / "openapi.json"


def build_openapi() -> dict[str, Any]:
    """The app's OpenAPI document, independent of any deployment's settings."""
    from argd.api.app import create_app
    from argd.persistence.settings import Settings

    with tempfile.TemporaryDirectory(prefix="argd-openapi-") as tmp:
        app = create_app(Settings(data_dir=Path(tmp), database_url="sqlite://", broker_url="memory://"))
        return app.openapi()


def render(document: dict[str, Any]) -> str:
    """Stable text: two-space indent, key order as generated, trailing newline."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m argd.api.openapi", description=__doc__)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="write the document")
    action.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    parser.add_argument("--path", type=Path, default=OPENAPI_PATH, help=f"default: {OPENAPI_PATH}")
    args = parser.parse_args(argv)
    text = render(build_openapi())
    if args.write:
        args.path.write_text(text, encoding="utf-8")
        print(f"wrote {args.path}")
        return 0
    current = args.path.read_text(encoding="utf-8") if args.path.exists() else ""
    if current != text:
        print(f"{args.path} is out of date: run python -m argd.api.openapi --write", file=sys.stderr)
        return 1
    print(f"{args.path} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())

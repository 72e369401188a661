"""Write the API's OpenAPI schema to a file (the frontend generates its TypeScript types from it).

.venv/bin/python frontend/scripts/dump_openapi.py frontend/openapi.json
"""

import json
import sys
import tempfile
from pathlib import Path

from backend.app import create_app
from backend.settings import Settings

if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "frontend/openapi.json")
    with tempfile.TemporaryDirectory() as tmp:
        schema = create_app(Settings(data_dir=Path(tmp))).openapi()
    out.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out} ({len(schema['paths'])} paths)")

"""Generate the gRPC stubs of ``fedhpc.proto`` (``python -m fedhpc.gateway.stubs``).

The generated ``fedhpc_pb2.py`` / ``fedhpc_pb2_grpc.py`` are committed; a test
regenerates them and checks they are current. protoc writes a top-level
``import fedhpc_pb2``; it is rewritten as a relative import so the stubs live
inside the package.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent


def generate(dest: Path) -> list[Path]:
    """Run protoc on fedhpc.proto into ``dest``; return the files written."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        rc = protoc.main(["protoc", f"-I{HERE}", f"--python_out={tmp}", f"--grpc_python_out={tmp}",
                          str(HERE / "fedhpc.proto")])
        if rc != 0:
            raise RuntimeError(f"protoc failed with status {rc}")
        out = []
        for name in ("fedhpc_pb2.py", "fedhpc_pb2_grpc.py"):
            text = (Path(tmp) / name).read_text().replace("import fedhpc_pb2 as", "from . import fedhpc_pb2 as")
            (dest / name).write_text(text)
            out.append(dest / name)
    return out


if __name__ == "__main__":
    for p in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(p)

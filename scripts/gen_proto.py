#!/usr/bin/env python3
"""Regenerate ``dhtstore/pb/<name>_pb2.py`` and its type stub ``<name>_pb2.pyi``
from every ``proto/<name>.proto``.

    python scripts/gen_proto.py           # regenerate
    python scripts/gen_proto.py --check   # exit 1 if a generated module or stub is stale

Uses ``grpc_tools.protoc`` (the ``test`` extra). The check compares a module's
descriptor, not its text, so a newer protoc that only changes the generated
boilerplate is not "stale"; a stub is compared as text (it holds no boilerplate).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "dhtstore" / "pb"
PB_PACKAGE = "dhtstore.pb"


def _protoc(*args: str) -> None:
    from grpc_tools import protoc  # type: ignore[import-untyped]  # grpcio-tools publishes no types

    code = protoc.main(["protoc", f"-I{PROTO_DIR}", *args])
    if code != 0:
        raise SystemExit(f"protoc failed ({code}) on {' '.join(args)}")


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.glob("*.proto"))


def generate() -> None:
    for proto in proto_files():
        _protoc(f"--python_out={OUT_DIR}", f"--pyi_out={OUT_DIR}", str(proto))
        print(f"generated {OUT_DIR.relative_to(ROOT)}/{proto.stem}_pb2.py and .pyi")


def _strip_json_names(file: descriptor_pb2.FileDescriptorProto) -> None:
    def strip(message: descriptor_pb2.DescriptorProto) -> None:
        for f in message.field:
            f.ClearField("json_name")
        for nested in message.nested_type:
            strip(nested)

    for message in file.message_type:
        strip(message)


def stale_modules() -> list[str]:
    """Names of generated modules missing or not matching their .proto."""
    stale: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for proto in proto_files():
            out = Path(tmp) / f"{proto.stem}.pb"
            _protoc(f"--descriptor_set_out={out}", f"--pyi_out={tmp}", str(proto))
            stub = OUT_DIR / f"{proto.stem}_pb2.pyi"
            if not stub.exists() or stub.read_text() != (Path(tmp) / stub.name).read_text():
                stale.append(stub.name)
            expected = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
            _strip_json_names(expected)  # protoc leaves them out of generated Python
            try:
                module = importlib.import_module(f"{PB_PACKAGE}.{proto.stem}_pb2")
            except ImportError:
                stale.append(f"{proto.stem}_pb2 (missing)")
                continue
            actual = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
            if actual != expected:
                stale.append(f"{proto.stem}_pb2")
    return stale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that the generated code is current")
    args = parser.parse_args()
    if not args.check:
        generate()
        return
    sys.path.insert(0, str(ROOT))
    stale = stale_modules()
    if stale:
        print("stale generated code: " + ", ".join(stale) + "; run python scripts/gen_proto.py", file=sys.stderr)
        raise SystemExit(1)
    print("generated code is current")


if __name__ == "__main__":
    main()

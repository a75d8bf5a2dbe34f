"""Protobuf modules and their type stubs, generated from ``proto/*.proto`` by
``scripts/gen_proto.py``.

Do not edit the ``*_pb2.py`` and ``*_pb2.pyi`` files: change the ``.proto`` and
regenerate. A test (``tests/test_kadcodec.py``) fails when a generated file does not
match its source.
"""

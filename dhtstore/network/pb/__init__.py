"""Protobuf modules generated from ``proto/*.proto`` by ``scripts/gen_proto.py``.

Do not edit the ``*_pb2.py`` files: change the ``.proto`` and regenerate. A test
(``tests/test_kadcodec.py``) fails when a generated module no longer matches its source.
"""

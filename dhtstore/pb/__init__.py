"""Protobuf modules and their type stubs, generated from ``proto/*.proto`` by
``scripts/gen_proto.py``: the wire schemas of the network (``dht``, ``noise``,
``identify``) and of the records (``ipns``), so they sit in the core, below both.

Do not edit the ``*_pb2.py`` and ``*_pb2.pyi`` files: change the ``.proto`` and
regenerate. A test (``tests/test_kadcodec.py``) fails when a generated file does not
match its source.
"""

"""The provider module: the node's own provide list, kept provided by a sweeping reprovider.

``api`` is the contract (the ``Provider`` API, the sweep's settings and reports, the
``ProvideList`` and ``ClaimStore`` stores); ``service.ProvideListService`` implements the
API over a provide list (the CLI uses it); ``reprovider.Reprovider`` adds the sweep and
its APScheduler timer (the node uses it). ``sweep`` is the sweep's driver, whose docstring
explains the algorithm, and ``planner`` its decisions, without I/O. The stores are in SQL
(``providelist``, ``claims``) and in memory (``memory``, for the simulation).
"""

"""The provider module: the node's own provide list, kept provided by a sweeping reprovider.

``api`` is the contract; ``service.ProvideListService`` implements it over the store
(the CLI uses it); ``reprovider.Reprovider`` adds the sweep (``sweep``, whose docstring
explains the algorithm) and its APScheduler timer (the node uses it).
"""

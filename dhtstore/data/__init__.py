"""The data tier: SQLAlchemy models, the async engine factory, schema revisions.

Other modules call ``open_store(url)`` for an engine on a store at the code's revision
and use the models in ``dhtstore.data.models``; nothing outside ``migrations/`` creates
tables.
"""

from .engine import default_store_url, make_engine
from .schema import head_revision, open_store

__all__ = ["default_store_url", "head_revision", "make_engine", "open_store"]

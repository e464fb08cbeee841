"""MongoStore, the production Store on MongoDB (pymongo), one concern per private module.

The schema is documented at the top of :mod:`._schema`; the async facade is :mod:`._store`.
"""

from ._store import MongoStore as MongoStore

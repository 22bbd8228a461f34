"""Imports every capability's tables so that Base.metadata describes the whole schema."""

from lmops.access import tables as access_tables  # noqa: F401
from lmops.store.base import Base
from lmops.batch import tables as batch_tables  # noqa: F401
from lmops.chat import tables as chat_tables  # noqa: F401
from lmops.usage import records  # noqa: F401

metadata = Base.metadata

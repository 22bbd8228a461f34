"""Imports every capability's tables so that Base.metadata describes the whole schema."""

from lmops.store.base import Base
from lmops.usage import records  # noqa: F401

metadata = Base.metadata

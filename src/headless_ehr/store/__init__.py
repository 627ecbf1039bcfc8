"""The resource repository: the only code that writes resource tables."""

from .model import HistoryPage, SearchPage, StoredResource, WriteOutcome
from .repository import ResourceStore

__all__ = ["HistoryPage", "ResourceStore", "SearchPage", "StoredResource", "WriteOutcome"]

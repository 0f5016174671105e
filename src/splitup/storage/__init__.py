"""Content-addressed blob storage: a local directory of sha256-named files, its HTTP server and client,
and publishing/fetching of plans and task bundles by hash; and signed named records (a key's owner's
documents under (pubkey, topic), ``splitup.storage.records``)."""

from splitup.storage.blobstore import BlobStore, StorageError, is_sha256
from splitup.storage.bundles import PublishedPlan, fetch_plan, fetch_task, publish_plan
from splitup.storage.client import BlobClient
from splitup.storage.records import Record, RecordError, StoreUnavailable

__all__ = ["BlobStore", "StorageError", "is_sha256", "BlobClient", "PublishedPlan", "fetch_plan", "fetch_task",
           "publish_plan", "Record", "RecordError", "StoreUnavailable"]

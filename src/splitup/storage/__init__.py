"""Content-addressed blob storage: a local directory of sha256-named files, its HTTP server and client,
and publishing/fetching of plans and task bundles by hash."""

from splitup.storage.blobstore import BlobStore, StorageError, is_sha256
from splitup.storage.bundles import PublishedPlan, fetch_plan, fetch_task, publish_plan
from splitup.storage.client import BlobClient

__all__ = ["BlobStore", "StorageError", "is_sha256", "BlobClient", "PublishedPlan", "fetch_plan", "fetch_task",
           "publish_plan"]

"""The blob store over HTTP: ``GET``/``HEAD /blobs/{sha}`` with byte ranges, optional verified ``PUT``."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse

from splitup.storage.blobstore import BlobStore, StorageError, is_sha256

DEFAULT_MAX_PUT = 8 << 30


def create_app(store: BlobStore, *, writable: bool = False, max_put_bytes: int = DEFAULT_MAX_PUT) -> FastAPI:
    app = FastAPI(title="SplitUp blob store", docs_url=None, redoc_url=None)

    @app.get("/health")
    def health() -> dict[str, object]:
        return {"status": "ok", "writable": writable}

    @app.api_route("/blobs/{sha}", methods=["GET", "HEAD"], response_model=None)
    def get_blob(sha: str) -> FileResponse | JSONResponse:
        if not is_sha256(sha):
            return JSONResponse({"error": "blob names are sha256 hex digests"}, status_code=400)
        path = store.path(sha)
        if not path.is_file():
            return JSONResponse({"error": f"blob {sha[:12]} not found"}, status_code=404)
        # FileResponse answers Range requests (206) itself, which makes downloads resumable.
        return FileResponse(path, media_type="application/octet-stream", headers={"ETag": f'"{sha}"'})

    @app.put("/blobs/{sha}")
    async def put_blob(sha: str, request: Request) -> JSONResponse:
        if not writable:
            return JSONResponse({"error": "this store is read-only"}, status_code=405)
        if not is_sha256(sha):
            return JSONResponse({"error": "blob names are sha256 hex digests"}, status_code=400)
        if store.has(sha):
            return JSONResponse({"sha256": sha, "stored": False})
        chunks = []
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > max_put_bytes:
                return JSONResponse({"error": f"blob exceeds {max_put_bytes} bytes"}, status_code=413)
            chunks.append(chunk)
        try:
            store.put_stream(chunks, expected=sha)
        except StorageError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        return JSONResponse({"sha256": sha, "stored": True}, status_code=201)

    return app

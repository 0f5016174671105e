"""The blob store over HTTP: ``GET``/``HEAD /blobs/{sha}`` with byte ranges, optional verified ``PUT``; and
signed named records, ``GET``/``PUT /records/{pubkey}/{topic}`` (``splitup.storage.records``)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response

from splitup.storage.blobstore import BlobStore, StorageError, is_sha256
from splitup.storage.records import (
    MAX_RECORD_BYTES,
    SEQUENCE_HEADER,
    SIGNATURE_HEADER,
    Record,
    RecordError,
    RecordTooLarge,
    check_pubkey,
    check_topic,
    parse_sequence,
    parse_signature,
)

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

    @app.get("/records/{pubkey}/{topic:path}", response_model=None)
    def get_record(pubkey: str, topic: str) -> Response:
        """The record's body, its signature and sequence in headers; 404 when the key published none."""
        try:
            record = store.get_record(pubkey, topic)
        except RecordError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        if record is None:
            return JSONResponse({"error": f"{pubkey} published nothing under {topic[:80]!r}"}, status_code=404)
        return Response(record.body, media_type="application/octet-stream",
                        headers={SIGNATURE_HEADER: record.signature.hex(), SEQUENCE_HEADER: str(record.sequence)})

    @app.put("/records/{pubkey}/{topic:path}")
    async def put_record(pubkey: str, topic: str, request: Request) -> JSONResponse:
        """Store the body under (pubkey, topic) if the headers carry the key's signature over it: 201, or
        200 when exactly this version was there; 400 malformed, 403 not the key's signature, 409 a later
        version is stored, 413 over the size limit."""
        if not writable:
            return JSONResponse({"error": "this store is read-only"}, status_code=405)
        try:
            check_pubkey(pubkey)
            check_topic(topic)
            signature = parse_signature(request.headers.get(SIGNATURE_HEADER))
            sequence = parse_sequence(request.headers.get(SEQUENCE_HEADER))
            declared = request.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > MAX_RECORD_BYTES:
                raise RecordTooLarge(f"a record is at most {MAX_RECORD_BYTES} bytes")
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_RECORD_BYTES:
                    raise RecordTooLarge(f"a record is at most {MAX_RECORD_BYTES} bytes")
            stored = await run_in_threadpool(store.put_record, Record(pubkey, topic, sequence, bytes(body), signature))
        except RecordError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        return JSONResponse({"pubkey": pubkey, "topic": topic, "sequence": sequence, "stored": stored},
                            status_code=201 if stored else 200)

    return app

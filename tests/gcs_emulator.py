"""A local Google Cloud Storage for tests: the PyPI package `gcp-storage-emulator`, made to keep
the object generations that tensorstore (and so orbax) relies on.

Run as a script, it serves one in-memory bucket on 127.0.0.1 at a free port and prints
``PORT=<n>`` once it answers. Clients reach it through ``STORAGE_EMULATOR_HOST`` (gcsfs,
google-cloud-storage, and so `etils.epath` and tensorboardX) and ``TENSORSTORE_GCS_HTTP_URL``
(tensorstore, and so orbax); see `emulator_env`.

What the stock emulator lacks, and what is added here, following GCS's JSON API and tensorstore's
own GCS mock (``tensorstore/kvstore/gcs_http/gcs_mock.cc``):

- Media downloads carry no ``x-goog-generation`` header. Tensorstore reads an object's generation
  from it and fails every such read with "Malformed StorageGeneration" (first seen when orbax's
  OCDBT rereads ``manifest.ocdbt`` in the first checkpoint of a real model).
- Generation preconditions (``ifGenerationMatch``, ``ifGenerationNotMatch``) are ignored.
  Tensorstore makes its OCDBT manifest updates conditional on them (412 when the object changed)
  and revalidates cached reads with them (304 when unchanged).
"""

from __future__ import annotations

import argparse
import http.server
import sys
import time
from http import HTTPStatus

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import buckets, objects

EMULATOR_ENV_VARS = ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL")


def emulator_env(url: str) -> dict[str, str]:
    """Environment variables that point every GCS client used by jaxsent at `url`."""
    return {
        "STORAGE_EMULATOR_HOST": url,
        "TENSORSTORE_GCS_HTTP_URL": url,
        # gcsfs's default filesystem first asks the Storage Control API (gRPC, not emulated) for
        # the bucket's layout, and on failure warns and asks again at every call; the plain one
        # is what that falls back to anyway.
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }


def _generation(storage, bucket: str, name: str) -> int | None:
    try:
        return int(storage.get_file_obj(bucket, name)["generation"])
    except NotFound:
        return None


def _precondition_status(request, storage, name: str | None, *, read: bool) -> HTTPStatus | None:
    """The status GCS answers instead of the request when a generation precondition fails."""
    match = request.query.get("ifGenerationMatch")
    not_match = request.query.get("ifGenerationNotMatch")
    if name is None or (match is None and not_match is None):
        return None
    current = _generation(storage, request.params["bucket_name"], name)
    if match is not None:
        wanted = int(match[0])
        if (wanted == 0 and current is not None) or (wanted != 0 and current != wanted):
            return HTTPStatus.PRECONDITION_FAILED
    if not_match is not None and current is not None and current == int(not_match[0]):
        return HTTPStatus.NOT_MODIFIED if read else HTTPStatus.PRECONDITION_FAILED
    return None


def _with_preconditions(handler, *, read: bool, name_from_query: bool = False):
    def wrapped(request, response, storage, *args, **kwargs):
        if name_from_query:
            name = request.query.get("name", [None])[0]
        else:
            name = request.params.get("object_id")
        status = _precondition_status(request, storage, name, read=read)
        if status is not None:
            response.status = status
            return None
        return handler(request, response, storage, *args, **kwargs)

    return wrapped


def _download_with_generation(download):
    def wrapped(request, response, storage, *args, **kwargs):
        try:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        except NotFound:
            obj = None
        if obj is not None:
            response["x-goog-generation"] = str(obj["generation"])
            response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
        return download(request, response, storage, *args, **kwargs)

    return wrapped


def patch_handlers() -> None:
    """Patch the emulator's object handlers; call before importing its server module (whose
    route table holds the handler functions)."""
    if "gcp_storage_emulator.server" in sys.modules:
        raise RuntimeError("patch_handlers() must run before gcp_storage_emulator.server loads")
    # `get` serves media reads by calling the module-level `download`, so patching the module
    # attribute covers both routes.
    objects.download = _with_preconditions(_download_with_generation(objects.download), read=True)
    objects.get = _with_preconditions(objects.get, read=True)
    objects.delete = _with_preconditions(objects.delete, read=False)
    objects.insert = _with_preconditions(objects.insert, read=False, name_from_query=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--bucket", action="append", default=[], help="bucket to create")
    args = parser.parse_args()
    patch_handlers()
    # The server answers one request at a time; tensorstore opens many connections at once, and
    # the default listen backlog of 5 would refuse some of them (clients retry, slowly).
    http.server.HTTPServer.request_queue_size = 128
    from gcp_storage_emulator.server import create_server

    server = create_server(args.host, args.port, in_memory=True)
    for bucket in args.bucket:
        buckets.create_bucket(bucket, server._storage)
    server.start()
    print(f"PORT={server._api._httpd.server_address[1]}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()

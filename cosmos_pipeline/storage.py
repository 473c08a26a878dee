"""Media and outputs in an object store (`s3://...`, or any fsspec URL) as well as on local disk.

GPU hosts share no disk: bundles, conditioning media and LoRA adapters may be named by URI, and an output
folder may be one. A location is a local `Path` or a `URI`, text that keeps its `scheme://` (pathlib would
fold it to `s3:/`) with the path parts people use (`name`, `suffix`, `parent`, `/`). A URI is checked
when it is parsed, so no later prefix test can be fooled: no `..`, `.` or empty key segments, no query,
no credentials, no chained fsspec URL. `file://` is a local path, confined like any other.

Inputs are fetched once per host into a cache keyed by content (`<cache>/media/<sha256>/<name>`); an
index keyed by the URI and the object's version (ETag, size, time) finds them again without a download,
and the request key hashes that same content. Outputs are written to a local temporary file, then
uploaded: an object appears whole or not at all, and a conditional put (`If-None-Match: *` on S3) never
replaces an existing one unless asked. Credentials come from the store's own configuration (for S3 the
standard AWS environment, `~/.aws` or the instance role; `AWS_ENDPOINT_URL` for another S3 server) and
are never part of a request or a record.
"""

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Annotated, Any
from urllib.parse import unquote, urlsplit

from pydantic import PlainSerializer, PlainValidator, WithJsonSchema

from cosmos_pipeline.errors import InputError

_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]+)://")
_CHUNK = 8 * 2**20


class URI(str):
    """A URI as text with the parts of a path: `bucket` (the authority), `key`, `name`, `suffix`, `/`..."""

    __slots__ = ()

    @property
    def scheme(self) -> str:
        return self.split("://", 1)[0].lower()

    @property
    def bucket(self) -> str:
        return self.split("://", 1)[1].split("/", 1)[0]

    @property
    def key(self) -> str:
        return self.split("://", 1)[1].partition("/")[2]

    @property
    def name(self) -> str:
        return PurePosixPath(self.key).name

    @property
    def stem(self) -> str:
        return PurePosixPath(self.key).stem

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.key).suffix

    @property
    def parent(self) -> "URI":
        key = self.key.rstrip("/")
        return URI(f"{self.scheme}://{self.bucket}/{key.rsplit('/', 1)[0] if '/' in key else ''}")

    def __truediv__(self, other: str) -> "URI":
        """The URI of `other` below this one, checked like any parsed URI (no `..` can slip in)."""
        joined = location(f"{self.rstrip('/')}/{other}")
        assert isinstance(joined, URI)
        return joined

    def with_name(self, name: str) -> "URI":
        return self.parent / name

    def is_under(self, root: "URI") -> bool:
        """Same scheme and bucket, and the key starts with all of the root's key segments."""
        prefix = [segment for segment in root.key.split("/") if segment]
        return (self.scheme, self.bucket) == (root.scheme, root.bucket) and self.key.split("/")[
            : len(prefix)
        ] == prefix


def is_uri(value: object) -> bool:
    return isinstance(value, str) and _SCHEME.match(value) is not None


def location(value: Any) -> Path | URI:
    """A local path or a checked URI; what could escape a prefix is refused with the reason."""
    if isinstance(value, Path):
        return value
    if not isinstance(value, str | os.PathLike):
        raise InputError(f"a path or URI must be text, not {value!r}")
    text = os.fspath(value)
    if not text.strip():  # Path("") is the working folder: never what an empty value meant
        raise InputError("the path is empty: give a file's path or URI, or leave the key out")
    if "\x00" in text:  # no file system or store takes it (Python raises ValueError deep in `open`)
        raise InputError(f"{text!r}: a path or URI cannot contain a NUL character (\\x00)")
    if "::" in text and "://" in text:
        raise InputError(f"{text}: chained URLs (`a::b://`) are not accepted; give the store's own URI")
    if not is_uri(text):
        return Path(text)
    parts = urlsplit(text)
    if parts.scheme.lower() == "file":  # a local path in disguise: the local confinement applies
        if parts.netloc not in ("", "localhost"):
            raise InputError(f"{text}: a file:// URI names this host's files only (no host name)")
        return Path(unquote(parts.path))
    if parts.username is not None or parts.password is not None:
        raise InputError(
            f"{URI(text).scheme}://{parts.hostname}/...: credentials in a URI are not accepted; they come "
            "from the store's configuration (AWS_* environment, ~/.aws, an instance role)"
        )
    if parts.query or parts.fragment:
        raise InputError(f"{text}: a URI with a query (`?`) or fragment (`#`) is not accepted")
    uri = URI(text)
    if not uri.bucket:
        raise InputError(f"{text}: the URI names no bucket (scheme://bucket/key)")
    segments = uri.key.split("/")
    if uri.key.endswith("/"):
        segments.pop()  # a folder's trailing slash
    for segment in segments if uri.key else []:
        if unquote(segment) in ("", ".", ".."):
            shown = f"`{segment}`" if segment else "an empty segment (`//`)"
            raise InputError(f"{text}: {shown} in the key is not accepted; name the object by its full key")
    return uri


def _place(value: Path | URI | str) -> Path | URI:
    return value if isinstance(value, Path | URI) else location(value)


def _validate(value: Any) -> Path | URI:
    try:
        return location(value)
    except InputError as error:
        raise ValueError(str(error)) from None


# A request or settings field that holds a local path or a URI.
Location = Annotated[
    Path | URI,
    PlainValidator(_validate),
    PlainSerializer(str, when_used="json"),
    WithJsonSchema({"type": "string"}),
]


def cache_root() -> Path:
    """This host's cache (`COSMOS_CACHE_DIR`, as the embedded model's), never shared between hosts."""
    return Path(os.environ.get("COSMOS_CACHE_DIR") or Path.home() / ".cache" / "cosmos-world-pipeline")


def _filesystem(uri: URI):
    import fsspec  # here: a run with local paths only never loads a store's client

    try:
        return fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as error:
        raise InputError(
            f"{uri}: no filesystem for `{uri.scheme}://` ({error}); install its fsspec package (s3fs for S3)"
        ) from None


def _store_error(uri: URI, error: Exception) -> InputError:
    if isinstance(error, FileNotFoundError):
        return InputError(f"{uri} does not exist (or its bucket does not); check the URI")
    if isinstance(error, PermissionError):
        return InputError(
            f"{uri}: access denied ({error}); check the credentials of this host (AWS_* environment, ~/.aws)"
        )
    return InputError(f"{uri}: the store did not answer ({type(error).__name__}: {error})")


def info(uri: URI) -> dict[str, Any]:
    """The object's metadata (type, size, version); an InputError says what is wrong."""
    fs, path = _filesystem(uri)
    try:
        return fs.info(path)
    except OSError as error:
        raise _store_error(uri, error) from None


def exists(place: Path | URI | str) -> bool:
    place = _place(place)
    if isinstance(place, Path):
        return place.exists()
    fs, path = _filesystem(place)
    try:
        return fs.exists(path)
    except OSError as error:
        raise _store_error(place, error) from None


def is_file(place: Path | URI | str) -> bool:
    place = _place(place)
    if isinstance(place, Path):
        return place.is_file()
    try:
        return info(place)["type"] == "file"
    except InputError:
        return False


def size(place: Path | URI | str) -> int:
    place = _place(place)
    return place.stat().st_size if isinstance(place, Path) else int(info(place)["size"])


def read_bytes(place: Path | URI | str, max_bytes: int | None = None) -> bytes:
    """A small file's bytes (a bundle, a prompt, a sidecar), through the cache for a URI."""
    return local(place, max_bytes).read_bytes()


def read_text(place: Path | URI | str, max_bytes: int | None = None) -> str:
    return read_bytes(place, max_bytes).decode("utf-8")


# ----------------------------------------------------------------------------- the input cache


def _media_cache() -> Path:
    return cache_root() / "media"


def _version(found: dict[str, Any]) -> list[str]:
    """What changes when the object does: its ETag (S3), size and modification time."""
    stamp = found.get("ETag") or found.get("etag") or ""
    when = found.get("LastModified") or found.get("mtime") or found.get("created") or ""
    return [str(stamp), str(found.get("size")), str(when)]


def _index(uri: URI) -> Path:
    return _media_cache() / "index" / f"{hashlib.sha256(uri.encode()).hexdigest()}.json"


def _cached(uri: URI, version: list[str]) -> Path | None:
    try:
        entry = json.loads(_index(uri).read_text())
    except (OSError, ValueError):
        return None
    blob = _media_cache() / entry.get("sha256", "-") / uri.name
    return blob if entry.get("version") == version and blob.is_file() else None


def _remember(uri: URI, version: list[str], digest: str) -> None:
    index = _index(uri)
    index.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".index-", dir=index.parent)
    with os.fdopen(handle, "w") as file:
        json.dump({"uri": uri, "version": version, "sha256": digest}, file)
    os.replace(temporary, index)


def _download(uri: URI, fs, path: str, max_bytes: int | None) -> str:
    """Stream the object into the cache under its SHA-256; returns the digest. Concurrent fetches of the
    same content land on the same name (the rename is atomic), so nothing half-written is ever found."""
    cache = _media_cache()
    cache.mkdir(parents=True, exist_ok=True)
    digest, count = hashlib.sha256(), 0
    handle, temporary = tempfile.mkstemp(prefix=".fetch-", dir=cache)
    try:
        with os.fdopen(handle, "wb") as out, fs.open(path, "rb") as source:
            while chunk := source.read(_CHUNK):
                count += len(chunk)
                if max_bytes is not None and count > max_bytes:
                    raise InputError(f"{uri} grew past {max_bytes} bytes while being read; not fetched")
                digest.update(chunk)
                out.write(chunk)
        blob = cache / digest.hexdigest() / uri.name
        blob.parent.mkdir(exist_ok=True)
        os.replace(temporary, blob)
    except OSError as error:
        raise _store_error(uri, error) from None
    finally:
        Path(temporary).unlink(missing_ok=True)
    return digest.hexdigest()


def local(place: Path | URI | str, max_bytes: int | None = None) -> Path:
    """A local file or folder with the location's content: a local path as it is, a URI from the cache
    (fetched on first use; a folder, e.g. a LoRA adapter, file by file). `max_bytes` bounds a file."""
    place = _place(place)
    if isinstance(place, Path):
        return place
    found = info(place)
    if found["type"] == "directory":
        return _local_folder(place)
    if max_bytes is not None and int(found["size"]) > max_bytes:
        raise InputError(f"{place} is {found['size']} bytes, over the limit of {max_bytes}; not fetched")
    version = _version(found)
    cached = _cached(place, version)
    if cached is not None:
        return cached
    fs, path = _filesystem(place)
    digest = _download(place, fs, path, max_bytes)
    _remember(place, version, digest)
    return _media_cache() / digest / place.name


def _local_folder(uri: URI) -> Path:
    """Every file under the prefix, fetched into the cache, gathered in a folder named by their content."""
    fs, path = _filesystem(uri)
    files = sorted(name for name, item in fs.find(path, detail=True).items() if item["type"] == "file")
    if not files:
        raise InputError(f"{uri} is an empty folder")
    relative = [name[len(path.rstrip("/")) + 1 :] for name in files]
    blobs = [local(uri / name) for name in relative]
    contents = [[name, blob.parent.name] for name, blob in zip(relative, blobs, strict=True)]
    tree = hashlib.sha256(json.dumps(contents).encode())
    folder = _media_cache() / "folders" / tree.hexdigest()
    if not folder.is_dir():
        staging = Path(tempfile.mkdtemp(prefix=".folder-", dir=_media_cache()))
        for name, blob in zip(relative, blobs, strict=True):
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(blob, staging / name)
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            staging.rename(folder)
        except OSError:  # another process gathered the same content first
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def content_digest(place: Path | URI | str) -> str | None:
    """SHA-256 of a file's bytes (a URI's from the cache, where it is the blob's name); None if missing."""
    place = _place(place)
    if isinstance(place, URI):
        try:
            return local(place).parent.name
        except InputError:
            return None
    if not place.is_file():
        return None
    with open(place, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


# ----------------------------------------------------------------------------- outputs


def publish(source: Path, target: URI, overwrite: bool) -> None:
    """Upload a finished local file: the object appears whole or not at all; an existing one is kept
    unless `overwrite` (FileExistsError), by a conditional put where the store has one (S3)."""
    fs, path = _filesystem(target)
    try:
        fs.put_file(str(source), path, mode="overwrite" if overwrite else "create")
    except FileExistsError:
        raise
    except OSError as error:
        raise _store_error(target, error) from None


def remove(target: URI) -> None:
    fs, path = _filesystem(target)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass

"""Where a customer's dataset and a task's base model may come from, and the checks on each.

Dataset URIs (DatasetSpec.uri):
- `upload:<sha256>`: a file streamed with TaskService.UploadDataset, in the artifact store;
- a Hugging Face Hub id `org/name[@revision][:split]`;
- `http(s)://...`: only when the operator allows it, and only to public addresses (every
  host is resolved and every redirect re-checked before a byte is sent to it);
- a local path or `file://` URI: only under the operator's allowed roots, after resolving
  symlinks.

Base models are a local folder or a Hub id resolved into the local Hugging Face cache.

`SourceRefused.reason` is meant for the customer: it never quotes a file's content, nor a
path outside the allowed roots (a resolved symlink target is never echoed).
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import re
import socket
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HTTP_SCHEMES = ("http", "https")
MAX_REDIRECTS = 5
# Entries of a local dataset folder checked for symlinks before anything is read.
MAX_FOLDER_ENTRIES = 200_000

_SHA256 = re.compile(r"[0-9a-f]{64}")
_HUB_PART = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"
_HUB_DATASET = re.compile(
    rf"(?P<repo>{_HUB_PART}/{_HUB_PART})(?:@(?P<revision>[A-Za-z0-9_.\-/]+))?(?::(?P<split>[A-Za-z0-9_.\-]+))?"
)
_HUB_MODEL = re.compile(rf"(?P<repo>(?:{_HUB_PART}/)?{_HUB_PART})(?:@(?P<revision>[A-Za-z0-9_.\-/]+))?")
# A relative path whose name ends like a data file is a path, not a Hub id.
_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".tar", ".txt", ".arrow")

Resolver = Callable[..., list]  # socket.getaddrinfo's signature
Connector = Callable[[str, int, float], socket.socket]  # (ip, port, timeout) -> connected socket


class SourceRefused(ValueError):
    """A source the policy refuses, or that cannot be read; `field: reason`, safe to show."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


# ---- classification -------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    sha256: str

    @property
    def key(self) -> str:
        """The artifact store key (content address) of the uploaded blob."""
        return self.sha256


@dataclass(frozen=True)
class HubDataset:
    repo: str
    revision: str | None = None
    split: str | None = None


@dataclass(frozen=True)
class HttpUrl:
    url: str


@dataclass(frozen=True)
class LocalPath:
    path: str


DatasetSource = Upload | HubDataset | HttpUrl | LocalPath


def classify_dataset_uri(uri: str, field: str = "dataset.uri") -> DatasetSource:
    """Which kind of source `uri` names; SourceRefused for an empty or unsupported one.

    A relative `a/b` is a Hub id unless it starts with `.` or `~` or ends like a data file.
    """
    text = uri.strip()
    if not text:
        raise SourceRefused(field, "is empty")
    if "\x00" in text:
        raise SourceRefused(field, "contains a NUL character")
    if text.startswith("upload:"):
        digest = text[len("upload:") :]
        if not _SHA256.fullmatch(digest):
            raise SourceRefused(
                field, "an upload URI is 'upload:' followed by the 64 lower-case hex digits of its sha256"
            )
        return Upload(digest)
    parsed = urllib.parse.urlsplit(text)
    scheme = parsed.scheme.lower()
    if scheme in HTTP_SCHEMES:
        if not parsed.hostname:
            raise SourceRefused(field, "the URL has no host")
        return HttpUrl(text)
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise SourceRefused(field, "a file:// URI must name a local path (no host)")
        return LocalPath(urllib.request.url2pathname(parsed.path))
    if scheme and len(scheme) > 1 and "://" in text:
        raise SourceRefused(
            field, f"unsupported URI scheme '{scheme}'; use upload:, a Hub id, http(s):// or a local path"
        )
    if not text.startswith((".", "~", "/")) and not text.lower().endswith(_FILE_SUFFIXES):
        match = _HUB_DATASET.fullmatch(text)
        if match and "--" not in match["repo"] and ".." not in match["repo"]:
            return HubDataset(match["repo"], match["revision"], match["split"])
    return LocalPath(text)


# ---- local paths ------------------------------------------------------------------------------


def _real_roots(roots: Sequence[str | os.PathLike]) -> list[Path]:
    return [Path(os.path.realpath(os.fspath(r))) for r in roots if os.fspath(r).strip()]


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def check_local_path(path: str | os.PathLike, roots: Sequence[str | os.PathLike], field: str = "dataset.uri") -> Path:
    """The real path of `path` when it lies strictly inside one of `roots`, else SourceRefused.

    Symlinks are resolved before the check (a link pointing out is refused), and the check
    comes before any existence test, so an outside path's existence is never revealed. A
    root itself, the file-system root and, for folders, any symlink inside pointing out of
    the roots are refused too. Nothing is read.
    """
    real_roots = _real_roots(roots)
    if not real_roots:
        raise SourceRefused(field, "local paths are not allowed here (the operator allows no dataset roots)")
    text = os.fspath(path)
    if "\x00" in text:
        raise SourceRefused(field, "contains a NUL character")
    if not text.strip():
        raise SourceRefused(field, "is empty")
    real = Path(os.path.realpath(text))
    if not _inside(real, real_roots) or real == Path(real.anchor):
        raise SourceRefused(field, "is outside the allowed dataset roots")
    if real in real_roots:
        raise SourceRefused(field, "names an allowed dataset root itself; name a file or folder inside it")
    if not real.exists():
        raise SourceRefused(field, "no such file or folder under the allowed dataset roots")
    if real.is_dir():
        _check_folder_links(real, real_roots, field)
    elif not real.is_file():
        raise SourceRefused(field, "is neither a regular file nor a folder")
    if not os.access(real, os.R_OK):
        raise SourceRefused(field, "cannot be read by the service")
    return real


def _check_folder_links(folder: Path, roots: Sequence[Path], field: str) -> None:
    """Every entry of `folder` (recursively) stays inside the roots; a bounded walk."""

    def refuse(_err: OSError) -> None:
        raise SourceRefused(field, "holds an entry the service cannot read")

    seen = 0
    for current, dirs, files in os.walk(folder, onerror=refuse, followlinks=False):
        for name in dirs + files:
            seen += 1
            if seen > MAX_FOLDER_ENTRIES:
                raise SourceRefused(field, f"holds more than {MAX_FOLDER_ENTRIES} entries")
            entry = os.path.join(current, name)
            if os.path.islink(entry) and not _inside(Path(os.path.realpath(entry)), roots):
                raise SourceRefused(field, "holds a symlink that points outside the allowed dataset roots")
            if not os.access(entry, os.R_OK):  # refused now rather than a PermissionError mid-read
                raise SourceRefused(field, "holds an entry the service cannot read")


# ---- public URLs ------------------------------------------------------------------------------

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_public_address(address: str) -> bool:
    """False for loopback, private, link-local (metadata), multicast, reserved, unspecified,
    CGNAT and for IPv6 forms embedding such an IPv4 address (mapped, 6to4, Teredo, NAT64)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # the IPv4 address it stands for decides
            return is_public_address(str(ip.ipv4_mapped))
        embedded = ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and not is_public_address(str(embedded)):
            return False
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return False
    return ip.is_global and not (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved or ip.is_unspecified
    )


def _split_url(url: str, field: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path?query) of an http(s) URL; SourceRefused otherwise."""
    try:
        parsed = urllib.parse.urlsplit(url)
        port = parsed.port
    except ValueError:
        raise SourceRefused(field, "is not a valid URL") from None
    scheme = parsed.scheme.lower()
    if scheme not in HTTP_SCHEMES:
        raise SourceRefused(field, "only http:// and https:// URLs can be fetched")
    if not parsed.hostname:
        raise SourceRefused(field, "the URL has no host")
    target = parsed.path or "/"
    if parsed.query:
        target += "?" + parsed.query
    return scheme, parsed.hostname, port or (443 if scheme == "https" else 80), target


def _public_addresses(host: str, port: int, field: str, resolve: Resolver) -> list[str]:
    try:
        infos = resolve(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError):
        raise SourceRefused(field, "the URL's host does not resolve") from None
    addresses = [info[4][0] for info in infos]
    if not addresses:
        raise SourceRefused(field, "the URL's host does not resolve")
    # Every address must be public: a host answering both a public and a private address
    # could otherwise be connected to the private one.
    if not all(is_public_address(a) for a in addresses):
        raise SourceRefused(field, "the URL points to a loopback, private, link-local or otherwise non-public address")
    return addresses


def check_public_url(url: str, field: str = "dataset.uri", resolve: Resolver | None = None) -> None:
    """SourceRefused unless `url` is http(s) and its host resolves only to public addresses."""
    _, host, port, _ = _split_url(url, field)
    _public_addresses(host, port, field, resolve or socket.getaddrinfo)


def _default_connect(ip: str, port: int, timeout: float) -> socket.socket:
    return socket.create_connection((ip, port), timeout=timeout)


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to the address that was checked, not to whatever the name resolves to later."""

    def __init__(self, host: str, port: int, ip: str, timeout: float, connect: Connector):
        super().__init__(host, port, timeout=timeout)
        self._ip, self._connect = ip, connect

    def connect(self) -> None:
        self.sock = self._connect(self._ip, self.port, self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, ip: str, timeout: float, connect: Connector):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._ip, self._connect = ip, connect

    def connect(self) -> None:
        sock = self._connect(self._ip, self.port, self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def fetch_public_url(
    url: str,
    dest: Path,
    max_bytes: int,
    timeout_s: float,
    *,
    field: str = "dataset.uri",
    resolve: Resolver | None = None,
    connect: Connector | None = None,
) -> Path:
    """Download `url` into `dest` and return it. Redirects are followed by
    hand (at most MAX_REDIRECTS), each hop's host resolved and checked before connecting,
    and the connection made to the checked address. Bounded by `max_bytes` and by
    `timeout_s` for the whole download. Failures are SourceRefused (no URL of a later hop,
    nor any of the body, is quoted)."""
    resolve = resolve or socket.getaddrinfo
    connect = connect or _default_connect
    deadline = time.monotonic() + timeout_s
    current = url
    for _hop in range(MAX_REDIRECTS + 1):
        scheme, host, port, target = _split_url(current, field)
        ip = _public_addresses(host, port, field, resolve)[0]
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SourceRefused(field, f"the download took longer than {timeout_s:g} s")
        conn_type = _PinnedHTTPS if scheme == "https" else _PinnedHTTP
        conn = conn_type(host, port, ip, remaining, connect)
        try:
            conn.request(
                "GET", target, headers={"User-Agent": "gradients-mesh-dataset-prep", "Accept-Encoding": "identity"}
            )
            response = conn.getresponse()
            if response.status in (301, 302, 303, 307, 308):
                location = response.getheader("Location")
                if not location:
                    raise SourceRefused(
                        field, f"the server answered a redirect (HTTP {response.status}) without a location"
                    )
                current = urllib.parse.urljoin(current, location)
                continue
            if not 200 <= response.status < 300:
                raise SourceRefused(field, f"the server answered HTTP {response.status}")
            declared = response.getheader("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise SourceRefused(field, f"the file is larger than the {max_bytes} byte limit")
            _stream(response, dest, max_bytes, deadline, timeout_s, field)
            return dest
        except SourceRefused:
            raise
        except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
            if time.monotonic() >= deadline or isinstance(exc, TimeoutError):
                raise SourceRefused(field, f"the download took longer than {timeout_s:g} s") from None
            raise SourceRefused(field, f"could not be downloaded ({type(exc).__name__})") from None
        finally:
            conn.close()
    raise SourceRefused(field, f"more than {MAX_REDIRECTS} redirects")


def _stream(
    response: http.client.HTTPResponse, dest: Path, max_bytes: int, deadline: float, timeout_s: float, field: str
) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    with dest.open("wb") as out:
        while chunk := response.read(1 << 20):
            size += len(chunk)
            if size > max_bytes:
                raise SourceRefused(field, f"the file is larger than the {max_bytes} byte limit")
            if time.monotonic() > deadline:
                raise SourceRefused(field, f"the download took longer than {timeout_s:g} s")
            out.write(chunk)


# ---- models -----------------------------------------------------------------------------------


def hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hf_cache_dir(data_dir: str | os.PathLike) -> Path:
    """The Hugging Face hub cache: HF_HUB_CACHE, else HF_HOME/hub, else <data_dir>/hf."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path(data_dir) / "hf"


def hf_datasets_cache_dir(data_dir: str | os.PathLike) -> Path:
    """Where `datasets` keeps prepared Hub datasets: HF_DATASETS_CACHE, else HF_HOME/datasets
    (both the library's own defaults), else <data_dir>/hf/datasets."""
    if os.environ.get("HF_DATASETS_CACHE"):
        return Path(os.environ["HF_DATASETS_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "datasets"
    return Path(data_dir) / "hf" / "datasets"


def _is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "model_index.json").is_file()


def resolve_model(ref: str, cache_dir: Path | None = None, field: str = "base_model") -> Path:
    """The local folder of a base model: `ref` itself when it is a model folder, else the
    snapshot of the Hub id `org/name[@revision]` in `cache_dir` (downloaded unless
    HF_HUB_OFFLINE). SourceRefused when neither."""
    text = ref.strip()
    if not text:
        raise SourceRefused(field, "is empty")
    local = Path(text).expanduser()
    looks_local = text.startswith((".", "~", "/")) or os.path.isabs(text)
    if local.is_dir() and _is_model_folder(local):
        return local.resolve()
    match = None if looks_local else _HUB_MODEL.fullmatch(text)
    if match is None or "--" in match["repo"] or ".." in match["repo"]:
        raise SourceRefused(
            field,
            "is neither a local model folder (config.json or model_index.json) "
            "nor a Hugging Face model id 'org/name[@revision]'",
        )
    return _snapshot(match["repo"], match["revision"], cache_dir, field)


def _snapshot(repo: str, revision: str | None, cache_dir: Path | None, field: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = hf_offline()
    shown = repo + (f"@{revision}" if revision else "")
    try:
        folder = Path(
            snapshot_download(
                repo, revision=revision, cache_dir=str(cache_dir) if cache_dir else None, local_files_only=offline
            )
        )
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        raise SourceRefused(
            field,
            f"model {shown!r} was not found in the local Hugging Face cache (offline); "
            "download it into the cache first or name a local model folder",
        ) from None
    except GatedRepoError:
        raise SourceRefused(field, f"model {shown!r} is gated on the Hugging Face Hub") from None
    except RevisionNotFoundError:
        raise SourceRefused(field, f"model {shown!r}: no such revision on the Hugging Face Hub") from None
    except RepositoryNotFoundError:
        raise SourceRefused(field, f"model {shown!r} was not found on the Hugging Face Hub") from None
    except (OSError, ValueError) as exc:  # network failures, bad revision strings...
        raise SourceRefused(field, f"model {shown!r} could not be fetched ({type(exc).__name__})") from None
    if not _is_model_folder(folder):
        raise SourceRefused(field, f"model {shown!r} has neither config.json nor model_index.json")
    return folder


def model_kind(path: Path) -> str:
    """'diffusion' for a diffusers pipeline (model_index.json), 'text' for a transformers model."""
    path = Path(path)
    if (path / "model_index.json").is_file():
        return "diffusion"
    if (path / "config.json").is_file():
        return "text"
    raise SourceRefused(
        "base_model", "is neither a transformers model (config.json) nor a diffusers pipeline (model_index.json)"
    )


# Architectures whose MLP has two matrices (up, down) rather than the gated three.
_PLAIN_MLP = {"gpt2", "gpt_neo", "gpt_neox", "gptj", "opt", "bloom", "falcon", "phi", "starcoder2", "gpt_bigcode"}
# Architectures with learned absolute position embeddings (n_positions x hidden).
_LEARNED_POSITIONS = {"gpt2", "gpt_neo", "opt", "gpt_bigcode"}
# Architectures whose class default is untied input / output embeddings.
_UNTIED_BY_DEFAULT = {
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
    "gpt_neox",
    "olmo",
    "olmo2",
}


def _first(config: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    return None


def params_from_config(config: dict[str, Any]) -> int | None:
    """Parameter count of a decoder-only transformer from its config (None when unknown).

    embeddings V*h (twice unless tied) + L * (attention + MLP + 2 norms of h) + final norm h,
    attention = h*(n_heads*d) (q) + 2*h*(n_kv*d) (k, v) + (n_heads*d)*h (o) — 4h² for plain
    multi-head attention — and MLP = 3*h*I gated (llama) or 2*h*I, times the experts of a MoE
    plus its h*E router. Biases are left out (a fraction of a percent).
    """
    if isinstance(config.get("text_config"), dict):  # multimodal wrappers: the language model
        config = config["text_config"]
    vocab = _first(config, "vocab_size")
    hidden = _first(config, "hidden_size", "n_embd", "d_model")
    layers = _first(config, "num_hidden_layers", "n_layer", "num_layers")
    if not all(isinstance(v, int) and v > 0 for v in (vocab, hidden, layers)):
        return None
    model_type = str(config.get("model_type", "")).lower()
    heads = _first(config, "num_attention_heads", "n_head") or 1
    kv_heads = _first(config, "num_key_value_heads", "num_kv_heads") or heads
    head_dim = _first(config, "head_dim") or hidden // heads
    inter = _first(config, "intermediate_size", "n_inner", "ffn_dim") or 4 * hidden
    attention = hidden * heads * head_dim * 2 + 2 * hidden * kv_heads * head_dim
    mlp = (2 if model_type in _PLAIN_MLP else 3) * hidden * inter
    experts = _first(config, "num_local_experts", "num_experts", "n_routed_experts")
    if isinstance(experts, int) and experts > 1:
        mlp = mlp * experts + hidden * experts
    per_layer = attention + mlp + 2 * hidden
    tied = config.get("tie_word_embeddings", model_type not in _UNTIED_BY_DEFAULT)
    embeddings = vocab * hidden * (1 if tied else 2)
    if model_type in _LEARNED_POSITIONS:
        embeddings += (_first(config, "n_positions", "max_position_embeddings") or 0) * hidden
    return embeddings + layers * per_layer + hidden


def params_b_from_config(path: Path) -> float | None:
    """Billions of parameters estimated from `path`'s config.json (a folder or the file)."""
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    count = params_from_config(config)
    return None if count is None else count / 1e9

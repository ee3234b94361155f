"""gradients.sources: where customers' datasets and base models may come from.

Real sockets, a real local HTTP server and a real file system; the only thing injected is
name resolution (and where a "public" address connects to), so that a redirect from a
public-looking host to a private one can be exercised without the internet.
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import os
import socket
import threading
from pathlib import Path

import pytest

from gradients.sources import (
    HttpUrl,
    HubDataset,
    LocalPath,
    SourceRefused,
    Upload,
    check_local_path,
    check_public_url,
    classify_dataset_uri,
    fetch_public_url,
    hf_cache_dir,
    is_public_address,
    model_kind,
    params_b_from_config,
    params_from_config,
    resolve_model,
)

SHA = "ab" * 32


# ---- classification -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri, expected",
    [
        (f"upload:{SHA}", Upload(SHA)),
        ("org/name", HubDataset("org/name")),
        ("org/name@v1.0", HubDataset("org/name", "v1.0")),
        ("org/name:test", HubDataset("org/name", None, "test")),
        ("my-org/data.set_2@refs/pr/3:validation", HubDataset("my-org/data.set_2", "refs/pr/3", "validation")),
        ("https://example.com/d.jsonl", HttpUrl("https://example.com/d.jsonl")),
        ("http://example.com:8080/x?y=1", HttpUrl("http://example.com:8080/x?y=1")),
        ("file:///data/rows.jsonl", LocalPath("/data/rows.jsonl")),
        ("/data/rows.jsonl", LocalPath("/data/rows.jsonl")),
        ("./rows.jsonl", LocalPath("./rows.jsonl")),
        ("data/rows.jsonl", LocalPath("data/rows.jsonl")),  # a data file's suffix: a path, not a Hub id
        ("../x", LocalPath("../x")),
        ("a/b/c", LocalPath("a/b/c")),
        ("org--x/name", LocalPath("org--x/name")),
    ],
)
def test_dataset_uris_are_classified(uri, expected):
    assert classify_dataset_uri(uri) == expected


@pytest.mark.parametrize(
    "uri, reason",
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("upload:1234", "64 lower-case hex digits"),
        (f"upload:{SHA.upper()}", "64 lower-case hex digits"),
        ("s3://bucket/key", "unsupported URI scheme 's3'"),
        ("ftp://host/file.csv", "unsupported URI scheme 'ftp'"),
        ("file://otherhost/etc/passwd", "must name a local path"),
        ("http:///nohost", "has no host"),
        ("/data/\x00rows", "NUL"),
    ],
)
def test_bad_dataset_uris_are_refused(uri, reason):
    with pytest.raises(SourceRefused) as refused:
        classify_dataset_uri(uri)
    assert refused.value.field == "dataset.uri" and reason in refused.value.reason


# ---- local paths --------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "root"
    (root / "customer").mkdir(parents=True)
    good = root / "customer" / "rows.jsonl"
    good.write_text('{"instruction": "a", "output": "b"}\n')
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret-name.txt"
    secret.write_text("SECRET")
    return {"root": root, "good": good, "outside": outside, "secret": secret}


def test_a_file_inside_a_root_is_allowed(tree):
    assert check_local_path(str(tree["good"]), [str(tree["root"])]) == tree["good"].resolve()
    # The same file through a root that is itself reached by a symlink.
    alias = tree["root"].parent / "alias"
    alias.symlink_to(tree["root"])
    assert check_local_path(str(alias / "customer" / "rows.jsonl"), [str(alias)]) == tree["good"].resolve()


def _refused(path, roots) -> SourceRefused:
    with pytest.raises(SourceRefused) as refused:
        check_local_path(path, roots)
    return refused.value


@pytest.mark.parametrize("path", ["/etc/passwd", "/", "/etc", "/proc/self/environ"])
def test_system_paths_are_outside_the_roots(tree, path):
    error = _refused(path, [str(tree["root"])])
    assert error.reason == "is outside the allowed dataset roots"


def test_dot_dot_tricks_are_resolved_before_the_check(tree):
    sneaky = f"{tree['root']}/customer/../../outside/secret-name.txt"
    assert _refused(sneaky, [str(tree["root"])]).reason == "is outside the allowed dataset roots"
    # Relative: resolved against the working directory, which is outside the root.
    assert _refused("../x", [str(tree["root"])]).reason == "is outside the allowed dataset roots"


def test_a_symlink_pointing_out_is_refused_without_naming_its_target(tree):
    link = tree["root"] / "customer" / "innocent.jsonl"
    link.symlink_to(tree["secret"])
    error = _refused(str(link), [str(tree["root"])])
    assert error.reason == "is outside the allowed dataset roots"
    assert "secret" not in str(error) and str(tree["outside"]) not in str(error)


def test_a_folder_holding_a_symlink_out_is_refused(tree):
    folder = tree["root"] / "customer" / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"x")
    (folder / "b.png").symlink_to(tree["secret"])
    error = _refused(str(folder), [str(tree["root"])])
    assert error.reason == "holds a symlink that points outside the allowed dataset roots"
    assert "secret" not in str(error)


def test_the_root_itself_and_missing_paths_are_refused(tree):
    assert "names an allowed dataset root itself" in _refused(str(tree["root"]), [str(tree["root"])]).reason
    assert (
        _refused(str(tree["root"] / "nope.jsonl"), [str(tree["root"])]).reason
        == "no such file or folder under the allowed dataset roots"
    )
    # Existence outside the roots is never revealed: same answer for a real and a made-up file.
    assert (
        _refused(str(tree["secret"]), [str(tree["root"])]).reason
        == _refused(str(tree["outside"] / "made-up"), [str(tree["root"])]).reason
    )


def test_no_roots_means_no_local_paths(tree):
    assert "allows no dataset roots" in _refused(str(tree["good"]), []).reason
    assert "allows no dataset roots" in _refused(str(tree["good"]), ["  "]).reason


# ---- addresses ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.1.2.3",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "169.254.0.1",  # link-local, cloud metadata
        "100.64.0.1",
        "100.127.255.254",  # CGNAT
        "0.0.0.0",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fe80::1%eth0",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:10.0.0.1",  # IPv4-mapped
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "not-an-address",
    ],
)
def test_non_public_addresses(address):
    assert not is_public_address(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses(address):
    assert is_public_address(address)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/rows.jsonl",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://localhost/rows.jsonl",  # a name that resolves to loopback
        "http://2130706433/",  # 127.0.0.1 written as a number
        "http://user@127.0.0.1/",
    ],
)
def test_urls_to_non_public_addresses_are_refused(url):
    with pytest.raises(SourceRefused) as refused:
        check_public_url(url)
    assert "non-public address" in refused.value.reason


def fake_resolver(table: dict[str, str]):
    def resolve(host, port, *args, **kwargs):
        if host not in table:
            try:  # address literals resolve to themselves; names outside the table do not resolve
                ipaddress.ip_address(host)
            except ValueError:
                raise socket.gaierror("unknown host") from None
            return socket.getaddrinfo(host, port, *args, **kwargs)
        family = socket.AF_INET6 if ":" in table[host] else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (table[host], port))]

    return resolve


def test_check_public_url_resolves_the_host():
    check_public_url("https://files.example.com/x", resolve=fake_resolver({"files.example.com": "93.184.216.34"}))
    with pytest.raises(SourceRefused, match="non-public"):  # rebinding to a private address
        check_public_url("https://files.example.com/x", resolve=fake_resolver({"files.example.com": "10.1.2.3"}))
    with pytest.raises(SourceRefused, match="does not resolve"):
        check_public_url("https://nowhere.example/x", resolve=fake_resolver({}))
    with pytest.raises(SourceRefused, match="only http"):
        check_public_url("ftp://files.example.com/x")


# ---- fetching with redirects -----------------------------------------------------------------------


class _Server:
    """A real HTTP server on loopback that plays a public host (via the injected resolver)."""

    def __init__(self, routes: dict[str, tuple[int, dict[str, str], bytes]]):
        self.requested: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.requested.append(self.path)
                status, headers, body = routes.get(self.path, (404, {}, b"missing"))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v.replace("PORT", str(outer.port)))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def connect_any(self, ip, port, timeout):
        """Every checked "public" address connects to this server."""
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    body = b'{"instruction": "a", "output": "b"}\n' * 3
    s = _Server(
        {
            "/data.jsonl": (200, {"Content-Type": "application/jsonl"}, body),
            "/moved": (302, {"Location": "/data.jsonl"}, b""),
            "/to-loopback": (302, {"Location": "http://127.0.0.1:PORT/secret"}, b""),
            "/to-localhost": (301, {"Location": "http://localhost:PORT/secret"}, b""),
            "/to-metadata": (307, {"Location": "http://metadata.example/latest/meta-data/"}, b""),
            "/loop": (302, {"Location": "/loop"}, b""),
            "/big": (200, {}, b"x" * 5000),
            "/secret": (200, {}, b"INTERNAL"),
        }
    )
    yield s
    s.close()


RESOLVE = fake_resolver(
    {"files.example.com": "93.184.216.34", "metadata.example": "169.254.169.254", "localhost": "127.0.0.1"}
)


def fetch(server, path, tmp_path, max_bytes=1 << 20):
    return fetch_public_url(
        f"http://files.example.com{path}",
        tmp_path / "out.bin",
        max_bytes,
        10,
        resolve=RESOLVE,
        connect=server.connect_any,
    )


def test_a_public_file_is_fetched_following_a_checked_redirect(server, tmp_path):
    dest = fetch(server, "/moved", tmp_path)
    assert dest.read_bytes().count(b"\n") == 3
    assert server.requested == ["/moved", "/data.jsonl"]


@pytest.mark.parametrize("path", ["/to-loopback", "/to-localhost", "/to-metadata"])
def test_a_redirect_to_a_non_public_address_is_refused_before_connecting(server, tmp_path, path):
    with pytest.raises(SourceRefused) as refused:
        fetch(server, path, tmp_path)
    assert "non-public address" in refused.value.reason
    assert server.requested == [path]  # the internal target was never asked
    assert "INTERNAL" not in str(refused.value) and "secret" not in str(refused.value)


def test_fetch_bounds(server, tmp_path):
    with pytest.raises(SourceRefused, match="more than 5 redirects"):
        fetch(server, "/loop", tmp_path)
    with pytest.raises(SourceRefused, match="larger than the 1000 byte limit"):
        fetch(server, "/big", tmp_path, max_bytes=1000)
    with pytest.raises(SourceRefused, match="HTTP 404"):
        fetch(server, "/absent", tmp_path)


def test_a_direct_loopback_url_is_never_connected_to(server, tmp_path):
    with pytest.raises(SourceRefused, match="non-public"):
        fetch_public_url(f"http://127.0.0.1:{server.port}/secret", tmp_path / "o", 1000, 5)
    assert server.requested == []


# ---- models ---------------------------------------------------------------------------------------


def _hub_snapshot(cache: Path, repo: str, revision: str, files: dict[str, str]) -> Path:
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<rev>/...}."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name, text in files.items():
        (snapshot / name).write_text(text)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(revision)
    return snapshot


def test_resolve_model_finds_a_cached_hub_snapshot_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rev = "0123456789abcdef0123456789abcdef01234567"
    snapshot = _hub_snapshot(
        tmp_path / "hub", "acme/tiny-lm", rev, {"config.json": json.dumps({"model_type": "llama"})}
    )
    assert resolve_model("acme/tiny-lm", tmp_path / "hub") == snapshot
    assert resolve_model(f"acme/tiny-lm@{rev}", tmp_path / "hub") == snapshot
    assert model_kind(snapshot) == "text"

    with pytest.raises(SourceRefused) as missing:
        resolve_model("acme/absent-model", tmp_path / "hub")
    assert missing.value.field == "base_model"
    assert "not found in the local Hugging Face cache (offline)" in missing.value.reason


def test_resolve_model_local_folders(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text("{}")
    assert resolve_model(str(model)) == model.resolve()
    assert model_kind(model) == "diffusion"
    for bad in (str(tmp_path), "/nowhere/model", "./rel/model", "a/b/c", ""):
        with pytest.raises(SourceRefused):
            resolve_model(bad, tmp_path / "hub")
    with pytest.raises(SourceRefused):
        model_kind(tmp_path)


def test_hf_cache_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HOME", raising=False)
    assert hf_cache_dir(tmp_path) == tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", "/srv/hf")
    assert hf_cache_dir(tmp_path) == Path("/srv/hf/hub")
    monkeypatch.setenv("HF_HUB_CACHE", "/srv/cache")
    assert hf_cache_dir(tmp_path) == Path("/srv/cache")


# ---- φ(M) from the config ---------------------------------------------------------------------------


def test_params_of_a_llama_config_by_hand():
    config = {
        "model_type": "llama",
        "vocab_size": 1000,
        "hidden_size": 64,
        "num_hidden_layers": 3,
        "intermediate_size": 256,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "tie_word_embeddings": False,
    }
    # 2·V·h + L·(4h² + 3·h·I + 2h) + h = 128000 + 3·(16384 + 49152 + 128) + 64
    assert params_from_config(config) == 128000 + 3 * 65664 + 64 == 325056
    tied = {**config, "tie_word_embeddings": True}
    assert params_from_config(tied) == 325056 - 64000


def test_params_with_grouped_query_attention_and_experts_by_hand():
    gqa = {
        "model_type": "mistral",
        "vocab_size": 100,
        "hidden_size": 64,
        "num_hidden_layers": 1,
        "intermediate_size": 128,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
    }
    # q, o: 64·64 each; k, v: 64·(2·8) each -> 10240; MLP 3·64·128 = 24576; norms 128; untied 2·6400
    assert params_from_config(gqa) == 12800 + (10240 + 24576 + 128) + 64
    moe = {**gqa, "model_type": "mixtral", "num_local_experts": 4}
    # four expert MLPs and a 64x4 router
    assert params_from_config(moe) == 12800 + (10240 + 4 * 24576 + 64 * 4 + 128) + 64


def test_params_of_a_gpt2_config_by_hand():
    config = {"model_type": "gpt2", "vocab_size": 100, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 16}
    # tied V·h + positions 16·h + L·(4h² + 2·h·4h + 2h) + h
    assert params_from_config(config) == 3200 + 512 + 2 * (4096 + 8192 + 64) + 32


def test_params_b_from_config_files(tmp_path):
    assert params_b_from_config(tmp_path) is None  # no config.json
    (tmp_path / "config.json").write_text("not json")
    assert params_b_from_config(tmp_path) is None
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert params_b_from_config(tmp_path) is None  # sizes unknown
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "text_config": {
                    "model_type": "llama",
                    "vocab_size": 1000,
                    "hidden_size": 64,
                    "num_hidden_layers": 3,
                    "intermediate_size": 256,
                    "num_attention_heads": 4,
                    "tie_word_embeddings": False,
                }
            }
        )
    )
    assert params_b_from_config(tmp_path / "config.json") == pytest.approx(325056 / 1e9)


def test_params_b_matches_a_real_tiny_model(tmp_path):
    from transformers import AutoModelForCausalLM

    from gradients.models.tiny import build_tiny_llama

    folder = build_tiny_llama(tmp_path / "tiny")
    model = AutoModelForCausalLM.from_pretrained(folder)
    real = sum(p.numel() for p in model.parameters())
    assert params_b_from_config(folder) * 1e9 == pytest.approx(real, abs=0.5)
    # And with grouped-query attention and tied embeddings.
    folder = build_tiny_llama(tmp_path / "gqa", num_key_value_heads=2, tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_pretrained(folder)
    real = sum(p.numel() for p in model.parameters())
    assert params_b_from_config(folder) * 1e9 == pytest.approx(real, abs=0.5)
    assert os.path.isfile(folder / "config.json")


# ---- dataset_prep's settings of the policy --------------------------------------------------------


def test_dataset_root_settings():
    from gradients.runtime import ConfigError, load_settings
    from services.dataset_prep.settings import DatasetPrepSettings

    settings = load_settings(DatasetPrepSettings, {})
    assert settings.local_roots == [] and settings.allow_http is False
    settings = load_settings(
        DatasetPrepSettings,
        {"GRADIENTS_DATASET_LOCAL_ROOTS": "/srv/a, /srv/b,", "GRADIENTS_DATASET_ALLOW_HTTP": "true"},
    )
    assert settings.local_roots == ["/srv/a", "/srv/b"] and settings.allow_http is True
    for bad, problem in (
        ("srv/a", "is not an absolute path"),
        ("/srv/a,/", "must not include the file-system root"),
        ("/srv/..", "must not include the file-system root"),
    ):
        with pytest.raises(ConfigError, match=problem):
            load_settings(DatasetPrepSettings, {"GRADIENTS_DATASET_LOCAL_ROOTS": bad})

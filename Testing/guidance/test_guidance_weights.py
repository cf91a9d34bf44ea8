"""Weights: resumable sha256-checked download (against a loopback server), import, registry, CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rada.errors import InputError
from rada.guidance import weights as W

PAYLOAD = bytes(range(256)) * 4096 + b"tail"          # ~1 MiB, not a multiple of the chunk size
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Server:
    """A loopback HTTP server for one file; honours ``Range`` unless told not to, can cut short."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.ranges = True
        self.cut_after: int | None = None     # send this many body bytes, then drop the connection
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests.append({"path": self.path, "range": self.headers.get("Range")})
                if self.path != "/file.bin":
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and outer.ranges:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(outer.payload):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(outer.payload)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(outer.payload) - 1}/{len(outer.payload)}")
                else:
                    self.send_response(200)
                body = outer.payload[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.cut_after is not None:
                    self.wfile.write(body[:outer.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    outer.cut_after = None
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/file.bin"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    with _Server(PAYLOAD) as s:
        yield s


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("RADA_HOME", str(tmp_path / "rada_home"))
    return tmp_path / "rada_home" / "weights"


def test_download_checks_sha256_and_renames_atomically(server, tmp_path) -> None:
    dest = tmp_path / "w" / "file.bin"
    assert W.download_file(server.url, dest, SHA, progress=False) == SHA
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("file.bin.part").exists()
    assert server.requests[-1]["range"] is None


def test_download_resumes_with_http_range(server, tmp_path) -> None:
    dest = tmp_path / "file.bin"
    half = len(PAYLOAD) // 2 + 17
    dest.with_name("file.bin.part").write_bytes(PAYLOAD[:half])
    assert W.download_file(server.url, dest, SHA, progress=False) == SHA
    assert server.requests[-1]["range"] == f"bytes={half}-"
    assert dest.read_bytes() == PAYLOAD


def test_an_interrupted_download_keeps_its_part_and_resumes(server, tmp_path) -> None:
    dest = tmp_path / "file.bin"
    server.cut_after = 300_000
    with pytest.raises(InputError, match="again"):
        W.download_file(server.url, dest, SHA, progress=False)
    part = dest.with_name("file.bin.part")
    assert part.exists() and 0 < part.stat().st_size < len(PAYLOAD) and not dest.exists()
    kept = part.stat().st_size
    assert W.download_file(server.url, dest, SHA, progress=False) == SHA
    assert server.requests[-1]["range"] == f"bytes={kept}-"
    assert dest.read_bytes() == PAYLOAD


def test_a_server_ignoring_range_restarts_the_file(server, tmp_path) -> None:
    server.ranges = False
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.part").write_bytes(b"garbage that must not stay in front")
    assert W.download_file(server.url, dest, SHA, progress=False) == SHA
    assert dest.read_bytes() == PAYLOAD


def test_a_complete_part_file_is_finished_on_416(server, tmp_path) -> None:
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.part").write_bytes(PAYLOAD)
    assert W.download_file(server.url, dest, SHA, progress=False) == SHA
    assert dest.read_bytes() == PAYLOAD


def test_a_bad_hash_is_rejected_and_nothing_is_kept(server, tmp_path) -> None:
    dest = tmp_path / "file.bin"
    with pytest.raises(InputError, match="sha256 mismatch"):
        W.download_file(server.url, dest, "0" * 64, progress=False)
    assert not dest.exists() and not dest.with_name("file.bin.part").exists()
    # a corrupted kept prefix is caught by the whole-file hash too
    dest.with_name("file.bin.part").write_bytes(b"x" * 1000)
    with pytest.raises(InputError, match="sha256 mismatch"):
        W.download_file(server.url, dest, SHA, progress=False)
    assert not dest.exists()


def test_unreachable_and_missing_urls_say_what_to_do(server, tmp_path) -> None:
    with pytest.raises(InputError, match="HTTP 404.*rada weights import"):
        W.download_file(server.url.replace("file.bin", "nope"), tmp_path / "f", progress=False)
    with pytest.raises(InputError, match="rada weights import"):
        W.download_file("http://127.0.0.1:9/x", tmp_path / "f", progress=False, timeout=2)


def test_registry_hashes() -> None:
    openai = W.REGISTRY["openai-vit-b-16"]
    # OpenAI publishes the file's sha256 as a path component of its URL
    assert openai.sha256 == openai.urls[0].split("/")[-2] and len(openai.sha256) == 64
    assert openai.filename == "ViT-B-16.pt"
    for name in ("alpha-clip-b16-grit1m", "alpha-clip-b16-grit20m"):
        w = W.REGISTRY[name]
        assert w.role == "alpha-visual" and w.sha256 is None and w.urls   # unknown: recorded on first use
    assert W.REGISTRY["alpha-clip-b16-grit1m"].filename == "clip_b16_grit1m_fultune_8xe.pth"
    assert W.files_for(["alpha-clip-b16-grit1m", "clip-b16"]) == ["openai-vit-b-16", "alpha-clip-b16-grit1m"]


def test_cache_dir_follows_rada_home(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("RADA_HOME", str(tmp_path))
    assert W.cache_dir() == tmp_path / "weights"
    monkeypatch.delenv("RADA_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert W.cache_dir() == tmp_path / "xdg" / "rada" / "weights"


def test_download_records_an_unknown_hash_and_later_checks_it(server, home, monkeypatch) -> None:
    alpha = W.REGISTRY["alpha-clip-b16-grit1m"]
    path = W.download("alpha-clip-b16-grit1m", url=server.url, progress=False)
    assert path == home / alpha.filename and path.read_bytes() == PAYLOAD
    record = W.read_manifest()[alpha.filename]
    assert record == {**record, "sha256": SHA, "verified": False, "origin": server.url}
    assert W.verify(alpha) == SHA
    path.write_bytes(PAYLOAD[:-1] + b"!")              # tampered or bit-rotted
    with pytest.raises(InputError, match="changed or is corrupt"):
        W.verify(alpha)


def test_download_of_a_published_hash_rejects_other_content(server, home) -> None:
    with pytest.raises(InputError, match="sha256 mismatch"):
        W.download("openai-vit-b-16", url=server.url, progress=False)
    assert not (home / "ViT-B-16.pt").exists()


def test_import_is_the_offline_path(tmp_path, home, monkeypatch) -> None:
    src = tmp_path / "clip_b16_grit1m_fultune_8xe.pth"
    src.write_bytes(PAYLOAD)
    dest = W.import_file(src, progress=False)
    assert dest == home / src.name and dest.read_bytes() == PAYLOAD
    assert W.read_manifest()[src.name]["sha256"] == SHA
    # a file claiming to be OpenAI's ViT-B-16.pt must have its published hash
    fake = tmp_path / "ViT-B-16.pt"
    fake.write_bytes(PAYLOAD)
    with pytest.raises(InputError, match="not ViT-B-16.pt as published"):
        W.import_file(fake, progress=False)
    monkeypatch.setitem(W.REGISTRY, "openai-vit-b-16", dataclasses.replace(W.REGISTRY["openai-vit-b-16"], sha256=SHA))
    W.import_file(fake, progress=False)
    assert W.read_manifest()["ViT-B-16.pt"]["verified"] is True
    resolved = W.resolve("alpha-clip-b16-grit1m", rehash=True)
    assert resolved.openai == home / "ViT-B-16.pt" and resolved.visual == dest
    assert resolved.sha256 == {"ViT-B-16.pt": SHA, src.name: SHA}
    assert W.resolve("clip-b16").visual is None
    with pytest.raises(InputError, match="unknown weights"):
        W.import_file(src, name="nope", progress=False)


def test_resolve_names_every_missing_file(home) -> None:
    with pytest.raises(InputError, match=r"no ViT-B-16\.pt and no clip_b16_grit1m_fultune_8xe\.pth.*rada weights"):
        W.resolve()
    with pytest.raises(InputError, match="unknown encoder"):
        W.resolve("vit-huge")


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    from rada.cli import main

    rc = main(args)
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_weights_list_import_download(server, tmp_path, home, capsys) -> None:
    rc, out, _ = _cli(["weights", "list"], capsys)
    rows = json.loads(out)
    assert rc == 0 and {r["name"] for r in rows} == set(W.REGISTRY) and not any(r["present"] for r in rows)
    src = tmp_path / "clip_b16_grit20m_fultune_2xe.pth"
    src.write_bytes(PAYLOAD)
    rc, out, _ = _cli(["weights", "import", str(src)], capsys)
    assert rc == 0 and json.loads(out)["sha256"] == SHA
    rc, out, _ = _cli(["weights", "download", "alpha-clip-b16-grit1m", "--url", server.url, "--quiet"], capsys)
    assert rc == 0, out
    assert (home / "clip_b16_grit1m_fultune_8xe.pth").read_bytes() == PAYLOAD
    rc, out, _ = _cli(["weights", "list"], capsys)
    present = {r["name"]: r for r in json.loads(out) if r["present"]}
    assert set(present) == {"alpha-clip-b16-grit1m", "alpha-clip-b16-grit20m"}
    assert present["alpha-clip-b16-grit1m"]["sha256"] == SHA and not present["alpha-clip-b16-grit1m"]["verified"]
    rc, _, err = _cli(["weights", "import", str(tmp_path / "absent.pth")], capsys)
    assert rc == 2 and "no such file" in err
    rc, _, err = _cli(["weights", "download", "openai-vit-b-16", "--url", server.url, "--quiet"], capsys)
    assert rc == 2 and "sha256 mismatch" in err and len(err.strip().splitlines()) == 1

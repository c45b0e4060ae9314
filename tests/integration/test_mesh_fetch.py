"""The mesh from a URL: a real http.server on loopback, ETag round trips, the last good copy on disk."""
import http.server
import os
import stat
import threading

import pytest

from netprobe.config import schema
from netprobe.errors import ConfigError
from netprobe.mesh import fetch
from tests.unit.test_mesh_model import EXAMPLE


class Server:
    """Serves `body` with ETag `etag`; records each request's If-None-Match; `status` forces an error."""

    def __init__(self):
        self.body = EXAMPLE.read_bytes()
        self.etag = '"v1"'
        self.status = None
        self.seen = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.seen.append(self.headers.get("If-None-Match"))
                if outer.status:
                    self.send_error(outer.status)
                elif self.headers.get("If-None-Match") == outer.etag:
                    self.send_response(304)
                    self.end_headers()
                else:
                    self.send_response(200)
                    self.send_header("ETag", outer.etag)
                    self.send_header("Content-Length", str(len(outer.body)))
                    self.end_headers()
                    self.wfile.write(outer.body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mesh.toml"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None


@pytest.fixture
def server():
    s = Server()
    yield s
    s.stop()


def cfg(**table):
    return schema.build(fetch.MeshConfig, table, schema.Where("host.toml", "mesh"))


def test_etag_round_trip_and_a_private_last_good_copy(server, tmp_path):
    cache = tmp_path / "state" / "mesh.toml"
    src = fetch.Source(cfg(url=server.url, cache=str(cache)))
    first = src.get()
    assert first.changed and not first.error and [h.name for h in first.mesh.hosts][0] == "fra1"
    assert cache.read_bytes() == server.body
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(str(cache) + ".etag").st_mode) == 0o600
    again = src.get()
    assert server.seen == [None, '"v1"']                 # the second request asked If-None-Match
    assert not again.changed and again.mesh.version == first.mesh.version
    server.body = server.body.replace(b'"192.0.2.11"', b'"192.0.2.99"')
    server.etag = '"v2"'
    third = src.get()
    assert third.changed and third.mesh.by_name["fra1"].address == "192.0.2.99"
    assert cache.read_bytes() == server.body


def test_source_down_uses_the_last_good_copy_even_after_a_restart(server, tmp_path):
    cache = tmp_path / "mesh.toml"
    good = fetch.Source(cfg(url=server.url, cache=str(cache))).get().mesh
    server.status = 503
    got = fetch.Source(cfg(url=server.url, cache=str(cache))).get()          # a restarted daemon
    assert got.mesh.version == good.version and "HTTP 503" in got.error and not got.changed
    assert server.seen[-1] == '"v1"'                      # the cached ETag went along
    server.stop()
    gone = fetch.Source(cfg(url=server.url, cache=str(cache), timeout="2s")).get()
    assert gone.mesh.version == good.version and "cannot fetch" in gone.error


def test_an_invalid_copy_is_neither_used_nor_cached(server, tmp_path):
    cache = tmp_path / "mesh.toml"
    src = fetch.Source(cfg(url=server.url, cache=str(cache)))
    good = src.get().mesh
    kept = cache.read_bytes()
    server.body, server.etag = b"[[host]]\nname = 1\naddress = \"10.0.0.1\"\n", '"bad"'
    got = src.get()
    assert got.mesh.version == good.version and not got.changed
    assert "host[0].name" in got.error and "\n" not in got.error
    assert cache.read_bytes() == kept


def test_no_good_copy_at_all_is_an_error(server, tmp_path):
    server.status = 404
    with pytest.raises(ConfigError, match="HTTP 404"):
        fetch.Source(cfg(url=server.url, cache=str(tmp_path / "m.toml"))).get()


def test_oversize_body_is_refused(server, tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "MAX_BYTES", 100)
    with pytest.raises(ConfigError, match="larger than 100 bytes"):
        fetch.Source(cfg(url=server.url, cache=str(tmp_path / "m.toml"))).get()


def test_file_source_keeps_the_running_mesh_when_the_file_goes_bad(tmp_path):
    path = tmp_path / "mesh.toml"
    path.write_bytes(EXAMPLE.read_bytes())
    src = fetch.Source(cfg(file=str(path)))
    good = src.get()
    assert good.changed
    path.write_text("[[test]]\nkind = 'x'\n")
    bad = src.get()
    assert bad.mesh is good.mesh and 'test[0].kind: "x" is not a test kind' in bad.error


@pytest.mark.parametrize("table,expected", [
    ({}, "mesh: needs exactly one of file and url"),
    ({"file": "a", "url": "http://x/"}, "mesh: needs exactly one of"),
    ({"url": "ftp://x/m.toml"}, "mesh.url: must be an http"),
    ({"file": "a", "refresh": "0s"}, "mesh.refresh:"),
])
def test_mesh_table_errors(table, expected):
    with pytest.raises(ConfigError) as exc:
        cfg(**table)
    assert expected in str(exc.value)


def test_host_config_mesh_table():
    from netprobe.config.load import load_text
    cfg = load_text('[mesh]\nfile = "/etc/netprobe/mesh.toml"\nself = "fra1"\nrefresh = "1m"\n', "h.toml")
    assert (cfg.mesh.file, cfg.mesh.self, cfg.mesh.refresh) == ("/etc/netprobe/mesh.toml", "fra1", 60.0)
    assert cfg.effective()["mesh"]["self"] == "fra1"
    with pytest.raises(ConfigError, match=r"^h.toml: mesh.url: must be an http"):
        load_text('[mesh]\nurl = "ftp://x/m"\n', "h.toml")
    with pytest.raises(ConfigError, match=r"^h.toml: mesh.selff: unknown key; did you mean 'self'\?"):
        load_text('[mesh]\nfile = "m"\nselff = "x"\n', "h.toml")

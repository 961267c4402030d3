"""Weight sources given as URLs: each URL is downloaded once into the plugin's own cache under a
name of its own (the SHA-256 of the whole URL), atomically, and a download that is refused is
not kept. A local HTTP server stands in for the network."""
import functools
import http.server
import os
import socket
import subprocess
import sys
import threading

import pytest
import torch

from lavis_xformer.models import sources


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.endswith("/cut/checkpoint_0.pth"):  # a connection lost mid-download
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"PK\x03\x04" + b"\0" * 996)
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path, monkeypatch):
    """(folder served, base URL, downloads folder): the plugin's cache under tmp_path, torch
    hub's too (where LAVIS would cache by file name)."""
    monkeypatch.setenv("LAVIS_XFORMER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, "http://127.0.0.1:%d" % httpd.server_address[1], tmp_path / "cache" / "downloads"
    httpd.shutdown()
    httpd.server_close()


def _publish(root, name, value):
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"w": torch.full((3,), float(value))}, "epoch": 0}, path)
    return path


def test_urls_ending_in_the_same_name_load_their_own_weights(server):
    root, base, downloads = server
    for run, value in (("run_a", 1), ("run_b", 2)):  # every run writes checkpoint_0.pth
        _publish(root, "%s/checkpoint_0.pth" % run, value)
    a, b = base + "/run_a/checkpoint_0.pth", base + "/run_b/checkpoint_0.pth"
    assert sources.load_checkpoint_file("pretrained", a)["w"][0] == 1
    assert sources.load_checkpoint_file("pretrained", b)["w"][0] == 2
    cached = sorted(os.listdir(downloads))
    assert len(cached) == 2 and all(n.endswith("-checkpoint_0.pth") for n in cached), cached
    assert not (root.parent / "torch_home").exists()  # not torch hub's shared cache
    # cached: read again without the server having the files
    os.remove(root / "run_a" / "checkpoint_0.pth")
    assert sources.load_checkpoint_file("pretrained", a)["w"][0] == 1
    assert {sources.download(a, "k"), sources.download(b, "k")} == {str(downloads / n) for n in cached}


def test_safetensors_url_keeps_its_format(server):
    from safetensors.torch import save_file

    root, base, downloads = server
    save_file({"w": torch.arange(3.0)}, str(root / "weights.safetensors"))
    state = sources.load_checkpoint_file("clip_vit_weights", base + "/weights.safetensors")
    assert torch.equal(state["w"], torch.arange(3.0))
    assert [n.endswith("-weights.safetensors") for n in os.listdir(downloads)] == [True]


@pytest.mark.parametrize("content, message", [
    (b"<html>404 Not Found</html>", "is truncated or not a torch checkpoint"),
    (b"", "is empty (0 bytes)"),
])
def test_refused_download_is_removed_from_the_cache(server, content, message):
    root, base, downloads = server
    (root / "checkpoint_3.pth").write_bytes(content)
    url = base + "/checkpoint_3.pth"
    with pytest.raises(sources.CorruptCheckpointError) as info:
        sources.load_checkpoint_file("pretrained", url)
    text = str(info.value)
    assert text.startswith("model.pretrained: %s (downloaded; removed from the cache)" % url), text
    assert message in text and "\n" not in text
    assert os.listdir(downloads) == []  # no later run finds it
    _publish(root, "checkpoint_3.pth", 7)  # fixed at the source: the same URL now loads
    assert sources.load_checkpoint_file("pretrained", url)["w"][0] == 7


def test_interrupted_download_is_not_cached(server):
    root, base, downloads = server
    url = base + "/cut/checkpoint_0.pth"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    downloads.mkdir(parents=True)  # the temporary file of a download that was killed
    stale = downloads / (".x-checkpoint_0.pth.%s.%s.tmp" % (socket.gethostname().split(".")[0], gone))
    stale.write_bytes(b"PK")
    with pytest.raises(sources.WeightSourceError) as info:
        sources.load_checkpoint_file("pretrained", url)
    assert str(info.value) == ("model.pretrained: the download of %s stopped after 1000 of "
                               "100000 bytes; run again" % url)
    assert os.listdir(downloads) == []  # neither the final name nor a temporary file


def test_unreachable_url_is_one_line(server):
    root, base, downloads = server
    url = base + "/missing/checkpoint_0.pth"
    with pytest.raises(sources.WeightSourceError) as info:
        sources.load_checkpoint_file("pretrained", url)
    assert str(info.value) == ("model.pretrained: cannot download %s (HTTPError: HTTP Error 404: "
                               "File not found); check the URL and the network" % url)
    assert "\n" not in str(info.value) and os.listdir(downloads) == []

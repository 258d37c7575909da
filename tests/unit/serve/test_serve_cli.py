"""``zephyr serve``: a non-loopback --host needs an API key (or an explicit --insecure-no-auth)."""

from __future__ import annotations

import pytest

from zephyr.cli import main


@pytest.fixture()
def started(monkeypatch):
    """Record what would be served instead of loading a model and binding a port."""
    import uvicorn

    import zephyr.serve.app as app_mod

    calls = []
    monkeypatch.setattr(app_mod, "create_app", lambda model, api_key=None, **kw: {"api_key": api_key})
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, log_level: calls.append((app, host)))
    monkeypatch.delenv("ZEPHYR_API_KEY", raising=False)
    return calls


def test_non_loopback_host_without_key_is_refused(tmp_path, capsys, started):
    assert main(["serve", "--model", str(tmp_path), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("zephyr serve: error: --host 0.0.0.0 is not a loopback address and needs an API key")
    assert "--insecure-no-auth" in err
    assert started == []  # nothing was served


@pytest.mark.parametrize(
    ("argv", "env", "key"),
    [
        (["--host", "0.0.0.0", "--api-key", "k1"], None, "k1"),
        (["--host", "0.0.0.0"], "k2", "k2"),
        (["--host", "127.0.0.1"], None, None),
        (["--host", "localhost"], None, None),
    ],
)
def test_key_or_loopback_serves(tmp_path, capsys, started, monkeypatch, argv, env, key):
    if env:
        monkeypatch.setenv("ZEPHYR_API_KEY", env)
    assert main(["serve", "--model", str(tmp_path), *argv]) == 0
    assert started == [({"api_key": key}, argv[1])]
    assert capsys.readouterr().err == ""


def test_insecure_no_auth_serves_with_a_warning(tmp_path, capsys, started):
    assert main(["serve", "--model", str(tmp_path), "--host", "0.0.0.0", "--insecure-no-auth"]) == 0
    assert started == [({"api_key": None}, "0.0.0.0")]
    assert "warning: listening on 0.0.0.0 without an API key" in capsys.readouterr().err


def test_batching_flags_reach_the_app(tmp_path, capsys, monkeypatch):
    import uvicorn

    import zephyr.serve.app as app_mod

    seen = {}
    monkeypatch.setattr(app_mod, "create_app", lambda model, **kw: seen.update(kw) or "app")
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, log_level: None)
    assert main(["serve", "--model", str(tmp_path)]) == 0
    assert (seen["max_batch_size"], seen["batch_window_ms"]) == (8, 20.0)  # defaults
    assert main(["serve", "--model", str(tmp_path), "--max-batch-size", "3", "--batch-window-ms", "20"]) == 0
    assert (seen["max_batch_size"], seen["batch_window_ms"]) == (3, 20.0)
    capsys.readouterr()
    assert main(["serve", "--model", str(tmp_path), "--max-batch-size", "0"]) == 2
    assert capsys.readouterr().err == "zephyr serve: error: --max-batch-size must be at least 1, got 0\n"

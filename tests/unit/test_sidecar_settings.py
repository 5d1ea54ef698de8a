"""Sidecar settings: YAML file, environment on top, validation with one clear line, secrets hidden."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from slotune.cli.main import main
from slotune.errors import ConfigError
from slotune.sidecar.config import load_settings, slo_of
from tests.support.paths import REPO


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_file_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, {"target": "http://127.0.0.1:8000", "interval": 5, "apply": {"canary_seconds": 60},
                             "receivers": [{"name": "ops", "url": "http://127.0.0.1:1/hook", "format": "slack"}]})
    monkeypatch.setenv("SLOTUNE_INTERVAL", "2.5")
    monkeypatch.setenv("SLOTUNE_APPLY__COOLDOWN_SECONDS", "30")
    monkeypatch.setenv("SLOTUNE_WEBHOOK_SECRET", "s3cret")
    s = load_settings(path)
    assert s.interval == 2.5  # env wins over the file
    assert s.apply.canary_seconds == 60 and s.apply.cooldown_seconds == 30  # nested: file and env merge
    assert s.receivers[0].format == "slack"
    assert s.secret_for(s.receivers[0]) == "s3cret"
    assert str(slo_of(s)) == "ttft_p95<=500ms,e2e_p95<=2s"


def test_committed_compose_settings_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLOTUNE_API_TOKEN", "t")
    s = load_settings(REPO / "deploy" / "slotune" / "sidecar.yaml")
    assert s.port == 8080 and s.host == "0.0.0.0" and s.target == "http://vllm:8000"
    assert s.api_token is not None and s.api_token.get_secret_value() == "t"


@pytest.mark.parametrize(("data", "needle"), [
    ({"target": "vllm:8000"}, "target: expected an http(s)"),
    ({"target": "http://x:1", "interval": 0}, "interval:"),
    ({"target": "http://x:1", "slo": "ttft<=1s"}, "slo: bad SLO target"),
    ({"target": "http://x:1", "slo": ""}, "empty SLO spec"),
    ({"target": "http://x:1", "slo": "  "}, "empty SLO spec"),
    ({"target": "http://x:1", "mode": "yolo"}, "mode:"),
    ({"target": "http://x:1", "mode": "apply"}, "needs a 'managed' server"),
    ({}, "give 'target'"),
    ({"target": "http://x:1", "receivers": [{"name": "a", "url": "ftp://h"}]}, "receivers.0.url"),
    ({"target": "http://x:1", "surprise": 1}, "surprise: Extra inputs are not permitted"),
    ({"managed": {"model": "m", "flags": {"max_num_seqs": "lots"}}}, "managed:"),
    ([1, 2], "expected a mapping"),
])
def test_bad_settings_are_one_clear_line(tmp_path: Path, data: object, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(_write(tmp_path, data))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml")


def test_secrets_never_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("SLOTUNE_API_TOKEN", "tok-very-secret")
    monkeypatch.setenv("SLOTUNE_WEBHOOK_SECRET", "hmac-very-secret")
    s = load_settings(_write(tmp_path, {"target": "http://127.0.0.1:1",
                                        "receivers": [{"name": "a", "url": "http://h/x", "secret": "rcv-secret"}]}))
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("settings: %s %r", s, s)
    text = caplog.text + str(s) + repr(s) + s.model_dump_json()
    for secret in ("tok-very-secret", "hmac-very-secret", "rcv-secret"):
        assert secret not in text


def test_cli_bad_config_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, {"target": "http://127.0.0.1:1", "port": 99999})
    assert main(["sidecar", "--config", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: bad settings") and "port" in err and len(err.splitlines()) == 1


def _env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (REPO / ".env.example").read_text().splitlines()
             if "=" in line and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


@pytest.mark.parametrize("key", ["api_token", "alert_token", "webhook_secret"])
def test_example_placeholders_are_refused(key: str) -> None:
    examples = {v for k, v in _env_example().items() if k.startswith("SLOTUNE_") and k.endswith(("TOKEN", "SECRET"))}
    assert examples, "the .env.example placeholders this test guards against"
    # the kind, not a list: any case, blanks or punctuation, and a ${VAR} compose never expanded
    for value in examples | {"CHANGE-ME", " changeme ", "REPLACE_ME", "<your-token>", "Change Me", "changeit",
                             "${SLOTUNE_WEBHOOK_SECRET}", "${SLOTUNE_API_TOKEN:-}"}:
        with pytest.raises(ConfigError) as err:
            load_settings(None, target="http://x:1", **{key: value})
        assert key in str(err.value) and "placeholder" in str(err.value) and value.strip() not in str(err.value)
    with pytest.raises(ConfigError, match="placeholder"):
        load_settings(None, target="http://x:1", unsigned_delivery=True,
                      receivers=[{"name": "a", "url": "http://h/x", "secret": "change-me"}])


def test_receivers_need_a_secret_unless_unsigned_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    receivers = [{"name": "ops", "url": "http://h/x"}, {"name": "own", "url": "http://h/y", "secret": "own-key-1"}]
    with pytest.raises(ConfigError) as err:
        load_settings(None, target="http://x:1", receivers=receivers)
    assert "webhook_secret" in str(err.value) and "ops" in str(err.value) and "own," not in str(err.value)
    monkeypatch.setenv("SLOTUNE_WEBHOOK_SECRET", "")  # compose's ${SLOTUNE_WEBHOOK_SECRET:-}: still no secret
    with pytest.raises(ConfigError, match="unsigned_delivery"):
        load_settings(None, target="http://x:1", receivers=receivers)
    s = load_settings(None, target="http://x:1", receivers=receivers, unsigned_delivery=True)
    assert s.webhook_secret is None and s.secret_for(s.receivers[0]) == "" and s.secret_for(s.receivers[1])
    monkeypatch.setenv("SLOTUNE_WEBHOOK_SECRET", "a-real-hmac-key")
    assert load_settings(None, target="http://x:1", receivers=receivers).webhook_secret is not None
    assert load_settings(None, target="http://x:1").receivers == []  # no receivers: nothing to sign


def test_cli_refuses_to_start_unsigned(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLOTUNE_WEBHOOK_SECRET", raising=False)
    path = _write(tmp_path, {"target": "http://127.0.0.1:1", "receivers": [{"name": "ops", "url": "http://h/x"}]})
    assert main(["sidecar", "--config", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: bad settings") and "unsigned_delivery" in err and len(err.splitlines()) == 1

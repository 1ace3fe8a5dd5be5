"""Settings: defaults file matches the models, overrides apply, typos are errors that name the key."""
import pytest

from homefeed.config import DEFAULT_FILE, Config, ConfigError, load_config


def test_default_file_documents_exactly_the_defaults():
    assert load_config(DEFAULT_FILE) == Config()


def test_file_then_set_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[ingest]\nsession_gap_s = 900\nvalid_days = 2\n")
    cfg = load_config(f, ["ingest.valid_days=3", "cleaning.crawler.enabled=false"])
    assert cfg.ingest.session_gap_s == 900
    assert cfg.ingest.valid_days == 3
    assert cfg.cleaning.crawler.enabled is False


@pytest.mark.parametrize("override, named", [
    ("ingest.sesion_gap_s=5", "ingest.sesion_gap_s"),
    ("cleaning.crawlr.enabled=true", "cleaning.crawlr"),
    ("ingets.policy=strict", "ingets"),
])
def test_unknown_key_is_named_with_valid_keys(override, named):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[override])
    assert named in str(e.value) and "valid keys" in str(e.value)


def test_typo_in_file_and_bad_value(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[cleaning.fake_orders]\nburst_buy = 3\n")
    with pytest.raises(ConfigError, match="burst_buy.*burst_buys"):
        load_config(f)
    with pytest.raises(ConfigError, match="ingest.policy"):
        load_config(overrides=["ingest.policy=lax"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(overrides=["nonsense"])

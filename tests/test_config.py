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


# --- every stage's knob tables are typed when the config loads -------------------------------------

from homefeed.bundle.settings import check_config, check_slots, load_checked_config  # noqa: E402


@pytest.mark.parametrize("override, named, valid", [
    ("rank.train.epocs=3", "epocs", "epochs"),
    ("rank.model.embeddim=8", "embeddim", "embed_dim"),
    ('rank.preset="dinn"', "dinn", "bst"),
    ("rank.samples.neg_ratoi=2", "neg_ratoi", "neg_ratio"),
    ("recall.channel_settings.itemfc.top_n=5", "itemfc", "itemcf"),
    ("recall.channel_settings.itemcf.topn=5", "topn", "top_n"),
    ("recall.merge.quotas.swng=2", "swng", "itemcf"),
    ('recall.channels=["itemcf", "popularr"]', "popularr", "popular"),
    ("recall.merge.min_shar=0.1", "min_shar", "min_share"),
    ("mechanism.images.bitz=32", "bitz", "bits"),
    ("mechanism.purchase.quantil=0.3", "quantil", "quantile"),
])
def test_every_stage_setting_is_checked_at_load(override, named, valid):
    cfg = load_config(overrides=[override]) if "preset" not in override and "channels=" not in override else None
    with pytest.raises(ConfigError) as e:
        load_checked_config(overrides=[override])
    assert named in str(e.value) and valid in str(e.value), str(e.value)
    if cfg is not None:  # the ground-floor load alone accepts it: only the stage classes know these keys
        with pytest.raises(ConfigError):
            check_config(cfg)


def test_quotas_must_name_configured_channels_not_just_known_ones():
    with pytest.raises(ConfigError, match="crowd.*recall.channels"):
        load_checked_config(overrides=['recall.channels=["itemcf", "popular"]', "recall.merge.quotas.crowd=2"])
    _, typed = load_checked_config(overrides=["recall.merge.quotas.itemcf=2"])
    assert typed.recall.merge.quotas == {"itemcf": 2.0}


def test_typed_settings_carry_the_values():
    _, typed = load_checked_config(overrides=["rank.train.epochs=3", "recall.channel_settings.itemcf.top_n=7",
                                              "mechanism.images.bits=32", 'rank.preset="lr"'])
    assert typed.rank.train.epochs == 3 and typed.rank.preset == "lr"
    assert typed.recall.knobs() == {"itemcf": {"top_n": 7}}
    assert typed.mechanism.config.images.bits == 32


def test_slots_must_name_material_pools():
    pools = {"recommended", "flash_sale"}
    check_slots({"recommended": 10, "flash_sale": 2}, pools)
    with pytest.raises(ConfigError, match="flash_sael.*valid slots: flash_sale, recommended"):
        check_slots({"recommended": 10, "flash_sael": 2}, pools)
    check_slots({"anything": 3}, set())  # a catalogue without pools: every slot draws from all items


def test_max_inflight_is_bounded():
    with pytest.raises(ConfigError, match="serve.max_inflight"):
        load_config(overrides=["serve.max_inflight=100000"])


def _commented_examples() -> list[str]:
    """Each `# key = value` example in default.toml as a TOML document under its section header."""
    import re
    import tomllib

    docs, header = [], None
    for line in DEFAULT_FILE.read_text().splitlines():
        text = line.strip()
        real = re.match(r"^\[\[?([a-z_.]+)\]\]?", text)
        example = re.match(r"^#\s*(\[[a-z_.]+\]|[a-z_]+\s*=.*)$", text)
        if real:
            header = real.group(1)
        elif example:
            body = example.group(1)
            if body.startswith("["):
                header = body.strip("[]")
                continue
            body = re.sub(r"\s+#.*$", "", body)  # a trailing comment
            tomllib.loads(body)  # every example is valid TOML
            docs.append(f"[{header}]\n{body}\n")
    return docs


def test_every_commented_example_in_default_toml_is_a_real_setting(tmp_path):
    docs = _commented_examples()
    assert len(docs) >= 25  # the examples of every stage's knob tables are found and parsed
    for i, doc in enumerate(docs):
        f = tmp_path / f"example{i}.toml"
        f.write_text(doc)
        if "category_overrides" in doc:  # the example names a file: make it exist
            (tmp_path / "leaf_to_standard.csv").write_text("leaf_category,standard\n1,a\n")
            f.write_text(doc.replace('"leaf_to_standard.csv"', repr(str(tmp_path / "leaf_to_standard.csv")).replace("'", '"')))
        load_checked_config(f)


def test_text_settings_keep_digits_as_text_and_experiment_arms_are_checked():
    cfg = load_config(overrides=["serve.admin_token=1234", "rank.preset=\"lr\"", "serve.docs=false"])
    assert cfg.serve.admin_token == "1234" and cfg.rank.preset == "lr" and cfg.serve.docs is False
    arms = '[{"name": "a", "share": 0.5}, {"name": "b", "share": 0.4}]'
    with pytest.raises(ConfigError, match="add up to 1"):
        load_config(overrides=[f"serve.experiment.arms={arms}"])
    with pytest.raises(ConfigError, match="control 'z' is not an arm"):
        load_config(overrides=['serve.experiment.arms=[{"name": "a", "share": 1.0}]', "serve.experiment.control=z"])
    cfg = load_config(overrides=['serve.experiment.arms=[{"name": "a", "share": 0.25}, {"name": "b", "share": 0.75}]'])
    assert [a.share for a in cfg.serve.experiment.arms] == [0.25, 0.75]

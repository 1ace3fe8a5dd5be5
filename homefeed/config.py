"""Settings: pydantic models with unknown keys rejected, one commented default file, overrides.

Precedence, lowest first: the defaults below (documented in `homefeed/default.toml`), a TOML file
given with `--config FILE`, then `--set a.b=value` pairs. A misspelt key is an error that names it
and lists the valid keys at that level.

    >>> cfg = load_config(overrides=["ingest.session_gap_s=600"])
    >>> cfg.ingest.session_gap_s
    600
"""
from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_FILE = Path(__file__).with_name("default.toml")


class Section(BaseModel):
    """Base of every settings block: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TimeWindow(Section):
    """A recurring daily window in local time, e.g. a midnight ordering spike 00:00-00:10.

    Rows inside it are removed only on days when it is abnormally full for this log: more than
    `min_lift` x the rows the log's own hour-of-day profile predicts for that day (from its other,
    ordinary days), counted in users, and so many that chance would flag any day of an ordinary log
    less often than `max_p_value`.
    """

    name: str
    start: str = Field(description="HH:MM local time, inclusive")
    end: str = Field(description="HH:MM local time, exclusive; may wrap past midnight")
    behaviors: list[str] = Field(default_factory=list, description="only these behaviours; empty = all")
    dates: list[str] = Field(default_factory=list, description="YYYY-MM-DD days it applies to; empty = every day")
    min_lift: float = Field(3.0, ge=0)  # x the rows the log's profile predicts for the day; 0 = every day with a row
    max_p_value: float = Field(1e-3, gt=0, le=1)  # ... and chance would flag a day of an ordinary log less often than this


class CrawlerRule(Section):
    """Bots: page-view rates far above this log's own busiest users (floors keep short logs safe)."""

    enabled: bool = True
    max_pv_per_minute: int = Field(20, ge=1)  # a busiest minute above this many page views marks a bot ...
    max_pv_per_hour: int = Field(120, ge=1)  # ... or a busiest local hour above this many ...
    rate_factor: float = Field(4.0, gt=0)  # ... when also above rate_factor x the log's 99th percentile (user, minute/hour)
    daily_factor: float = Field(10.0, gt=0)  # ... or a busiest day above this many times the 99th percentile of (user, day)


class FakeOrderRule(Section):
    """Brushed buys: no view of the item before the buy, or a burst of such buys."""

    enabled: bool = True
    require_view: bool = True  # a buy with no pv/click/fav/cart of the same item in view_lookback_s is fake
    view_lookback_s: int = Field(7 * 86400, ge=0)  # how far back the view may be
    min_history_s: int = Field(6 * 3600, ge=0)  # buys this soon after the log starts are not judged (longer when the log's view->buy delays are)
    history_quantile: float = Field(0.95, ge=0, le=1)  # ... that quantile of this log's view->buy delays
    burst_buys: int = Field(5, ge=1)  # this many buys without a view ...
    burst_window_s: int = Field(300, ge=0)  # ... within this many seconds are a burst (judged from the log's first second)


class InactiveRule(Section):
    enabled: bool = True
    min_events: int = 3  # users with fewer events overall are dropped from ranking samples only


class Cleaning(Section):
    """The cleaning rules, and the guard that stops a rule before it deletes real behaviour."""

    crawler: CrawlerRule = CrawlerRule()
    fake_orders: FakeOrderRule = FakeOrderRule()
    abnormal_windows: list[TimeWindow] = Field(
        default_factory=lambda: [TimeWindow(name="midnight_spike", start="00:00", end="00:10", behaviors=["buy", "cart"])]
    )
    inactive: InactiveRule = InactiveRule()
    max_removed_share: dict[str, float] = Field(default_factory=lambda: {"buy": 0.05})  # a crawler or fake-order test that would remove more of a behaviour stops
    max_abnormal_day_share: float = Field(0.25, ge=0, le=1)  # a window found abnormal on more of the log's days stops
    force: list[str] = Field(default_factory=list)  # tests that run past those limits, e.g. ["fake_order:no_view"]
    outlier_day_share: float = Field(0.1, ge=0, le=1)  # edge days with fewer rows than this x the median day are outliers


class Ingest(Section):
    policy: Literal["quarantine", "strict"] = "quarantine"
    tz_offset_hours: float = 8.0  # local time of the logs (China Standard Time by default)
    session_gap_s: int = 30 * 60  # a gap longer than this starts a new session
    valid_days: int = 1  # the last `test_days` days are test, the `valid_days` before them valid
    test_days: int = 1
    split_unit: Literal["day", "hour"] = "day"  # what valid_days/test_days count; "hour" for logs of a few hours
    split: Literal["auto", "time", "leave_one_out"] = "auto"  # auto: leave_one_out for logs without clock times, else time
    ordinal_step_s: int = Field(60, ge=1)  # logs without clock times: seconds between a user's events (< session_gap_s)
    ts_min: int = 788_918_400  # 1995-01-01 (MovieLens and Amazon reviews go back to 1996); outside [ts_min, ts_max): rejected
    ts_max: int = 4_102_444_800  # 2100-01-01


class World(Section):
    seed: int = 7
    size: Literal["tiny", "small", "large"] = "tiny"
    tz_offset_hours: float = 8.0


class Recall(Section):
    """Which channels run and their knobs. The knob tables are typed by `homefeed.recall.part.RecallSettings`
    when the config loads (`homefeed.bundle.settings.check_config`), so a typo there is an error too."""

    channels: list[str] = ["itemcf", "swing", "ranki2i", "crowd", "retarget", "popular"]
    k_per_channel: int = 200  # candidates each channel returns per request
    channel_settings: dict[str, dict[str, Any]] = Field(default_factory=dict)  # e.g. {"itemcf": {"top_n": 100}}
    merge: dict[str, Any] = Field(default_factory=dict)  # MergeSettings keys, e.g. {"k": 500, "min_share": 0.05}
    relevant_behaviors: list[str] = ["pv", "click", "fav", "cart", "buy"]  # what makes an item relevant in evaluation


class Rank(Section):
    """The ranking model served (and trained by `homefeed build`); typed by `homefeed.rank.part.RankPartSettings`."""

    preset: str = "din"  # lr, wdl, deepfm, pnn, nfm, dcn, dcnv2, deepresnet, din, bst
    model: dict[str, Any] = Field(default_factory=dict)  # ModelConfig overrides, e.g. {"embed_dim": 16}
    features: dict[str, Any] = Field(default_factory=dict)  # FeatureSettings keys
    samples: dict[str, Any] = Field(default_factory=dict)  # SampleSettings keys
    train: dict[str, Any] = Field(default_factory=dict)  # TrainSettings keys
    quantize: bool = True  # serve the dynamic int8 model when its AUC loss is within max_quant_auc_loss
    max_quant_auc_loss: float = 0.002


class Mechanism(Section):
    """Standard categories, image groups, purchase filter, scattering and exposure templates."""

    categories: dict[str, Any] = Field(default_factory=dict)  # CategoryConfig keys
    category_overrides: str | None = None  # CSV/Parquet leaf_category,standard that wins over the learned mapping
    images: dict[str, Any] = Field(default_factory=dict)  # ImageConfig keys
    purchase: dict[str, Any] = Field(default_factory=dict)  # PurchaseConfig keys
    scatter: dict[str, Any] = Field(default_factory=dict)  # ScatterConfig keys
    exposure: dict[str, Any] = Field(default_factory=dict)  # ExposureConfig keys


class Serve(Section):
    """The online service."""

    slots: dict[str, int] = Field(default_factory=lambda: {"recommended": 12, "flash_sale": 4, "group_buy": 4,
                                                           "flash_discount": 4})  # homepage slot -> items
    promotion_slots: dict[str, int] = Field(default_factory=lambda: {"main_venue": 8, "industry_venue": 4})
    recall_budget_ms: float = 80.0  # channels not done by then are dropped from the page (and counted)
    history_len: int = 200  # recent events per user read from the state store
    max_inflight: int = Field(2, ge=1, le=64)  # homepage requests inside the pipeline at once per worker (sizes its channel pool)
    exposure_pages: int = Field(30, ge=0)  # served pages remembered per user (the ranker's item_shown_* counts)
    admin_token: str = ""  # required in X-Admin-Token for /admin/*; empty = reload disabled (prefer admin_token_file)
    admin_token_file: str = ""  # a file whose first line is the admin token (never shows in `ps` or the environment)
    docs: bool = True  # serve /docs and /openapi.json
    state: str = "sqlite:homefeed_state.db"  # sqlite:PATH or redis://HOST:PORT/DB
    state_idle_days: float = Field(30.0, gt=0)  # a user's stored state is dropped after this long unwritten
    rank: bool = True  # rank the candidates with the bundle's model; false = the merged recall order
    mechanism: bool = True  # scatter, exposure templates and the purchase filter; false = the plain ranked list
    experiment: "Experiment" = Field(default_factory=lambda: Experiment())  # live A/B arms; none = every user the same page


class ExperimentArm(Section):
    """One arm of a live experiment: a share of the users, served by another bundle and/or other settings."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    share: float = Field(gt=0, le=1)  # of all users, by a salted hash of the user id
    bundle: str = ""  # a bundle folder for this arm (relative to where the server starts); "" = the served bundle
    overrides: list[str] = Field(default_factory=list, max_length=64)  # `--set`-style "serve.rank=false" lines


class Experiment(Section):
    """Live traffic split between arms (`serve.experiment`): stable per user across workers and restarts."""

    name: str = Field("ab", max_length=64)  # names the experiment in labels and salts the hash
    salt: str = ""  # changes every user's arm when changed; "" = the name
    control: str = ""  # the arm whose users get exactly the page of a server without experiments
    arms: list[ExperimentArm] = Field(default_factory=list, max_length=16)

    @model_validator(mode="after")
    def _arms_add_up(self) -> "Experiment":
        if not self.arms:
            return self
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique, got {names}")
        total = sum(a.share for a in self.arms)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"arm shares must add up to 1, got {total:g} ({', '.join(f'{a.name}={a.share:g}' for a in self.arms)})")
        if self.control and self.control not in names:
            raise ValueError(f"control {self.control!r} is not an arm; arms: {', '.join(names)}")
        return self


class Bundle(Section):
    """Trust between `build` and `serve`: an HMAC key signs the manifest, so a bundle built elsewhere is verified."""

    key_file: str = ""  # a file holding the key (first line); build signs, serve refuses an unsigned or changed bundle


class Spark(Section):
    """The `[spark]` knobs of `--engine spark`: where jobs run and how wide they shuffle."""

    master: str = "local[2]"  # local[N], local-cluster[E,C,MB], yarn, k8s://..., spark://...; "" = keep spark-submit's
    app_name: str = "homefeed"
    driver_memory: str = "2g"  # only takes effect when this process starts the JVM
    shuffle_partitions: int = Field(8, ge=1)  # spark.sql.shuffle.partitions: ~2-4x the cores of the cluster
    conf: dict[str, str] = Field(default_factory=dict)  # any other spark.* setting, applied last


class Config(Section):
    world: World = World()
    ingest: Ingest = Ingest()
    cleaning: Cleaning = Cleaning()
    recall: Recall = Recall()
    rank: Rank = Rank()
    mechanism: Mechanism = Mechanism()
    serve: Serve = Serve()
    bundle: Bundle = Bundle()
    spark: Spark = Spark()


class ConfigError(ValueError):
    """A config file or override that does not fit the settings; the message says where and why."""


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {k!r} is a value, not a section")
    node[keys[-1]] = value


def _parse_value(text: str) -> Any:
    """`--set` values are JSON when they parse (numbers, true, lists), else plain strings."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _is_text_setting(dotted: str) -> bool:
    """True when the setting at `dotted` is a plain string, so `--set serve.admin_token=1234` stays the text "1234"."""
    model: Any = Config
    for key in dotted.split("."):
        field = model.model_fields.get(key) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return False
        model = field.annotation
    return model is str


def _check_keys(model: type[BaseModel], tree: dict, where: str = "") -> None:
    """Reject unknown keys with the valid ones listed (pydantic's own message omits them)."""
    for key, value in tree.items():
        fields = model.model_fields
        if key not in fields:
            raise ConfigError(f"unknown setting {where + key!r}; valid keys{' in ' + where.rstrip('.') if where else ''}: {', '.join(fields)}")
        sub = fields[key].annotation
        if isinstance(value, dict) and isinstance(sub, type) and issubclass(sub, BaseModel):
            _check_keys(sub, value, f"{where}{key}.")


def _validated(cls: type[BaseModel], tree: dict, where: str = ""):
    """`cls.model_validate(tree)`, a validation error as a ConfigError naming the dotted key and the value."""
    try:
        return cls.model_validate(tree)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join([where] * bool(where) + [str(p) for p in first["loc"]])
        raise ConfigError(f"setting {loc!r}: {first['msg']} (got {first.get('input')!r})") from None


def typed(cls: type[BaseModel], knobs: dict, where: str):
    """`cls(**knobs)` for a stage's knob table at config key `where`; errors name the key and the valid ones."""
    _check_keys(cls, knobs, f"{where}.")
    return _validated(cls, knobs, where)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the TOML file at `path`, then `key.sub=value` overrides."""
    tree: dict = {}
    if path is not None:
        try:
            tree = tomllib.loads(Path(path).read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.sub=value")
        key, value = item.split("=", 1)
        key, value = key.strip(), value.strip()
        parsed = _parse_value(value)
        _set_path(tree, key, value if _is_text_setting(key) and not isinstance(parsed, str) else parsed)
    _check_keys(Config, tree)
    return _validated(Config, tree)

"""Shared fixtures: a real redis-server and a real 3-node Redis Cluster started for the session (skipped with a
reason when redis-server is absent), the test run's one local[2] SparkSession (skipped with a reason when Java
or pyspark is absent), and the tiny shop's dataset and bundles."""
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (make test installs it with apt-get where it can)")
    pytest.importorskip("redis")
    proc, port = _start_redis(exe, tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


def _start_redis(exe: str, folder, *args: str) -> tuple[subprocess.Popen, int]:
    """One redis-server on a free loopback port, AOF with fsync on every write; returns (process, port) once it answers."""
    import redis

    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--appendonly", "yes",
                             "--appendfsync", "always", "--save", "", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            return proc, port
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail(f"redis-server {' '.join(args)} did not start")


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory):
    """A real Redis Cluster of 3 masters on loopback ports (`redis-cli --cluster create`): keys of different users land
    on different nodes, so a script touching an undeclared key or keys of two hash slots fails as in production."""
    exe, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if exe is None or cli is None:
        pytest.skip("redis-server or redis-cli is not installed (make test installs them with apt-get where it can)")
    pytest.importorskip("redis")
    from redis.cluster import RedisCluster

    folder = tmp_path_factory.mktemp("redis_cluster")
    nodes = [_start_redis(exe, folder / str(i), "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                          "--cluster-port", str(free_port())) for i in range(3)]  # the bus port: not port + 10000
    try:
        subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{port}" for _, port in nodes), "--cluster-replicas", "0",
                        "--cluster-yes"], check=True, capture_output=True, timeout=60)
        for _ in range(200):  # the nodes agree on the slot map within a second or two
            if b"cluster_state:ok" in subprocess.run([cli, "-p", str(nodes[0][1]), "cluster", "info"], capture_output=True).stdout:
                break
            time.sleep(0.05)
        RedisCluster(host="127.0.0.1", port=nodes[0][1]).ping()
        yield f"redis+cluster://127.0.0.1:{nodes[0][1]}"
    finally:
        for proc, _ in nodes:
            proc.terminate()
            proc.wait(10)


def spark_missing() -> str | None:
    """Why Spark cannot run here, or None."""
    import importlib.util

    if shutil.which("java") is None:
        return "no Java runtime on PATH (make test installs openjdk-17-jre-headless with apt-get)"
    if importlib.util.find_spec("pyspark") is None:
        return "pyspark is not installed (make test installs the `spark` extra)"
    return None


SPARK_TEST_CONF = {f"spark.{jvm}.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC" for jvm in ("driver", "executor")}
"""Short-lived JVMs: compile with the quick JIT tier only and collect on one thread (~10% off the local[2] tests,
~25% off the local-cluster check, on 2 cores); no result depends on it."""


@pytest.fixture(scope="session")
def spark():
    """The test run's one local[2] SparkSession, 2 shuffle partitions (every Spark test and in-process `--engine
    spark` command uses it; stopped at the end)."""
    reason = spark_missing()
    if reason:
        pytest.skip(reason)
    from homefeed.distributed.session import SparkSettings, spark_session

    session = spark_session(SparkSettings(master="local[2]", shuffle_partitions=2, driver_memory="1g",
                                          conf=SPARK_TEST_CONF))
    yield session
    session.stop()


def _made_once(tmp_path_factory, name: str, make) -> Path:
    """A fresh folder made by `make(folder)` for this session; with HOMEFEED_TEST_CACHE=DIR (opt-in, for local
    iteration on a slow machine) the folder is kept in DIR/name and reused by later sessions once complete.
    Delete DIR after changing how the shop, the dataset or a bundle is built."""
    import os

    cache = os.environ.get("HOMEFEED_TEST_CACHE")
    if not cache:
        out = tmp_path_factory.mktemp(name)
        make(out)
        return out
    out = Path(cache) / name
    if not (out / ".complete").exists():
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        make(out)
        (out / ".complete").touch()
    return out


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """The tiny synthetic shop, generated once per test session (seed 7)."""
    from homefeed.world import WorldSpec, generate

    return _made_once(tmp_path_factory, "tiny_world", lambda out: generate(WorldSpec.preset("tiny", seed=7), out))


@pytest.fixture(scope="session")
def tiny_dataset_dir(tiny_world, tmp_path_factory):
    """The tiny shop ingested with the default config; returns the dataset folder."""
    from homefeed.config import Config
    from homefeed.data.ingest import ingest

    return _made_once(tmp_path_factory, "tiny_dataset", lambda out: ingest(tiny_world, out, Config()))


FAST_BUILD = ['mechanism.images={"steps": 30}', 'rank.preset="din"', 'rank.train={"epochs": 2}']


@pytest.fixture(scope="session")
def tiny_bundle(tiny_dataset_dir, tmp_path_factory):
    """A bundle of every part built from the tiny shop with quick settings (fewer CNN steps and epochs)."""
    from homefeed.config import load_config
    from homefeed.bundle import build_bundle

    return _made_once(tmp_path_factory, "tiny_bundle",
                      lambda out: build_bundle(tiny_dataset_dir, out, load_config(overrides=FAST_BUILD)))


ALT_BUILD = ['recall.channels=["itemcf", "crowd", "retarget", "popular"]', 'rank.preset="deepfm"', 'rank.train={"epochs": 1}']


@pytest.fixture(scope="session")
def tiny_bundle_alt(tiny_bundle, tiny_dataset_dir, tmp_path_factory):
    """A second, different bundle of the tiny shop (for reloads): the same mechanism and data parts, recall
    refitted with fewer channels and the ranker retrained as another preset."""
    import shutil

    from homefeed.config import load_config
    from homefeed.bundle import build_bundle

    def make(out):
        shutil.copytree(tiny_bundle, out / "bundle", ignore=shutil.ignore_patterns(".complete"))
        build_bundle(tiny_dataset_dir, out / "bundle", load_config(overrides=ALT_BUILD), parts=("recall", "rank"))

    return _made_once(tmp_path_factory, "tiny_bundle_alt", make) / "bundle"

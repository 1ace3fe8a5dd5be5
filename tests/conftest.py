"""Shared fixtures: a real redis-server started for the session (skipped with a reason when absent)."""
import shutil
import socket
import subprocess
import time

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
    import redis

    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--appendonly", "yes",
                             "--appendfsync", "always", "--save", ""], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """The tiny synthetic shop, generated once per test session (seed 7)."""
    from homefeed.world import WorldSpec, generate

    out = tmp_path_factory.mktemp("tiny_world")
    generate(WorldSpec.preset("tiny", seed=7), out)
    return out


@pytest.fixture(scope="session")
def tiny_dataset_dir(tiny_world, tmp_path_factory):
    """The tiny shop ingested with the default config; returns the dataset folder."""
    from homefeed.config import Config
    from homefeed.data.ingest import ingest

    out = tmp_path_factory.mktemp("tiny_dataset")
    ingest(tiny_world, out, Config())
    return out


FAST_BUILD = ['mechanism.images={"steps": 30}', 'rank.preset="din"', 'rank.train={"epochs": 2}']


@pytest.fixture(scope="session")
def tiny_bundle(tiny_dataset_dir, tmp_path_factory):
    """A bundle of every part built from the tiny shop with quick settings (fewer CNN steps and epochs)."""
    from homefeed.config import load_config
    from homefeed.bundle import build_bundle

    out = tmp_path_factory.mktemp("tiny_bundle")
    build_bundle(tiny_dataset_dir, out, load_config(overrides=FAST_BUILD))
    return out


ALT_BUILD = ['recall.channels=["itemcf", "crowd", "retarget", "popular"]', 'rank.preset="deepfm"', 'rank.train={"epochs": 1}']


@pytest.fixture(scope="session")
def tiny_bundle_alt(tiny_bundle, tiny_dataset_dir, tmp_path_factory):
    """A second, different bundle of the tiny shop (for reloads): the same mechanism and data parts, recall
    refitted with fewer channels and the ranker retrained as another preset."""
    import shutil

    from homefeed.config import load_config
    from homefeed.bundle import build_bundle

    out = tmp_path_factory.mktemp("tiny_bundle_alt") / "bundle"
    shutil.copytree(tiny_bundle, out)
    build_bundle(tiny_dataset_dir, out, load_config(overrides=ALT_BUILD), parts=("recall", "rank"))
    return out

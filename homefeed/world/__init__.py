"""The synthetic shop: a seeded generator of logs with a hidden truth, and a simulator that answers pages.

    >>> from homefeed.world import WorldSpec, generate, load_truth, Simulator
    >>> spec = WorldSpec.preset("tiny", seed=7)                    # doctest: +SKIP
    >>> paths = generate(spec, "out/tiny")                         # doctest: +SKIP
    >>> sim = Simulator.load("out/tiny", seed=0)                   # doctest: +SKIP
    >>> sim.respond(12, [5, 9, 31], ts=1_512_000_000)              # doctest: +SKIP
"""
from homefeed.world.generate import generate
from homefeed.world.simulator import Simulator
from homefeed.world.spec import WorldSpec
from homefeed.world.taobao import write_taobao_csv
from homefeed.world.truth import Truth, load_truth

__all__ = ["WorldSpec", "generate", "load_truth", "Truth", "Simulator", "write_taobao_csv"]

"""Training MIND: shuffled batches of samples, a batch of shared negatives per step, Adam, early stopping.

An epoch is one seeded permutation of the samples (`samples.Sequences`); each batch gathers its
behaviour windows and profile codes, draws S negatives shared by the batch from the corpus
(`samples.NegativeSampler`) and the routing's starting logits, and takes one Adam step on the
sampled-softmax loss (the model's forward). Every random draw comes from one seeded generator, in the
same order on every process, so data-parallel ranks (`Parallel`, `homefeed.distributed.mind_train`)
agree on each global batch and each computes its own rows of it.
The embedding tables get sparse gradients and their own SparseAdam, so a step touches only the rows it
looked up. With a `validate()` callback (the channel's HitRate on validation days, `validate.py`) it is
called after every epoch that ends at least `check_steps` optimizer steps after the last call (every
epoch on a large log, every 8th on a log of 13 batches), training stops after `patience` calls without
a better score (with `smooth_checks`, the score averaged with its neighbouring checks, `stopping.py`), and the
best checked epoch's weights are kept; without one, exactly `epochs` epochs run. Same seed and threads -> the same
weights. Progress goes to the `homefeed.recall.mind` logger (one line per epoch: loss, samples/s,
validation score) and to an optional `progress(step, done, total)` callback, the signature of the
CLI's progress display.

    >>> log = train_mind(model, seqs, profiles, sampler, settings=TrainSettings(epochs=2))   # doctest: +SKIP
    >>> log["epoch_loss"], log["samples_per_s"]                                               # doctest: +SKIP
"""
from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable

import numpy as np
import torch
from pydantic import Field

from homefeed.config import Section
from homefeed.recall.mind.model import MINDModel
from homefeed.recall.mind.samples import NegativeSampler, Sampler, Sequences
from homefeed.recall.mind.stopping import Stopper
from homefeed.threads import torch_threads

log = logging.getLogger("homefeed.recall.mind")


class TrainSettings(Section):
    """MIND training knobs."""

    epochs: int = Field(100, ge=1)  # the most epochs; with validation, training usually stops long before
    patience: int = Field(3, ge=1)  # stop after this many validations without a better (smoothed) score
    smooth_checks: int = Field(0, ge=0)  # pick the check by the mean score of it and this many checks either side
    # (`stopping.py`: on a 2,000-user sample of Amazon Toys the raw arg-max lands wherever the noise lifted it)
    check_steps: int = Field(100, ge=1)  # validate after the first epoch that ends this many steps after the last check
    early_stopping: bool = True  # stop on validation HitRate (False: run exactly `epochs`)
    valid_users: int = Field(2000, ge=1)  # validation users scored after each epoch (a seeded sample)
    valid_k: int = Field(50, ge=1)  # the K of the validation HitRate@K
    valid_head_weight: float = Field(0.0, ge=0, le=1)  # stop on (1 - w) HitRate@valid_k + w HitRate@(valid_k // 5):
    # on Amazon Toys HitRate@50 is flat after ~10 epochs while HitRate@10 still rises (MIND-1: 0.013 -> 0.019 on test)
    holdout: float = Field(0.1, ge=0, lt=1)  # share of training events held out when the dataset has no validation part
    batch_size: int = Field(512, ge=1)
    lr: float = Field(0.01, gt=0)  # Adam for the dense layers and SparseAdam for the tables
    negatives: int = Field(500, ge=1)  # S negatives per batch, shared by its samples
    sampler: Sampler = "log_uniform"  # negatives by count rank (log-uniform) or count ** unigram_power
    unigram_power: float = Field(0.75, gt=0)
    max_samples_per_user: int | None = Field(30, ge=1)  # each user's last N labels are samples; None = all
    seed: int = 0
    threads: int | None = Field(None, ge=1)  # torch CPU threads while training; None leaves torch's setting


class Parallel:
    """How the loop shares work with other processes; this base class is one process doing everything.

    A data-parallel subclass wraps the model for gradient exchange, picks this process's rows of each global
    batch (and `weight`, the share of the batch's loss its gradient carries), sums the epoch's loss and
    shares the validation score.
    """

    weight: float = 1.0

    def wrap(self, model: MINDModel) -> torch.nn.Module:
        """The module whose forward (the loss) the loop calls; its gradients reach `model`'s parameters."""
        return model

    def rows(self, n: int) -> slice:
        """The rows of a global batch of n samples this process computes (sets `weight`)."""
        return slice(0, n)

    def total(self, value: float) -> float:
        """A sum over the processes."""
        return value

    def score(self, validate: Callable[[], float]) -> float:
        """The validation score every process acts on."""
        return validate()


def _optimizers(model: MINDModel, lr: float) -> list[torch.optim.Optimizer]:
    tables = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    for m in tables:
        m.sparse = True
    sparse = {id(m.weight) for m in tables}
    dense = [p for p in model.parameters() if id(p) not in sparse]
    return [torch.optim.Adam(dense, lr=lr), torch.optim.SparseAdam([m.weight for m in tables], lr=lr)]


def train_mind(model: MINDModel, sequences: Sequences, profiles: np.ndarray, sampler: NegativeSampler, *,
               settings: TrainSettings | None = None, progress: Callable[[str, int, int], None] | None = None,
               validate: Callable[[], float] | None = None, parallel: Parallel | None = None) -> dict:
    """Train `model` in place; returns {"samples", "seconds", "samples_per_s", "epoch_loss", "valid", "best_epoch"}.

    Args:
        profiles: (n_users, F) int64 profile codes indexed by user code.
        validate: called after each epoch with the model in eval mode; higher is better. None: no early stopping.
        parallel: data-parallel sharing (None: this process alone).
    """
    s = settings if settings is not None else TrainSettings()
    if len(sequences) == 0:
        raise ValueError("no training samples: every user has fewer than two behaviours in the training events")
    with torch_threads(s.threads):
        return _fit(model, sequences, torch.from_numpy(np.asarray(profiles, np.int64)), sampler, s, progress, validate,
                    parallel if parallel is not None else Parallel())


def _fit(model: MINDModel, seqs: Sequences, profiles: torch.Tensor, sampler: NegativeSampler, s: TrainSettings,
         progress: Callable[[str, int, int], None] | None, validate: Callable[[], float] | None, par: Parallel) -> dict:
    gen = torch.Generator().manual_seed(s.seed)
    opts = _optimizers(model, s.lr)  # marks the tables sparse before a data-parallel wrapper sees them
    net = par.wrap(model)
    model.train()
    out = {"samples": 0, "seconds": 0.0, "epoch_loss": [], "valid": [], "valid_epochs": [], "best_epoch": s.epochs}
    stopper = Stopper(patience=s.patience, radius=s.smooth_checks)
    steps_per_epoch = -(-len(seqs) // s.batch_size)
    every = -(-s.check_steps // steps_per_epoch)  # epochs between validations: a small log learns little per epoch
    for epoch in range(s.epochs):
        t0 = time.perf_counter()
        tick = None if progress is None else (
            lambda step: progress(f"mind epoch {epoch + 1}/{s.epochs}", epoch * steps_per_epoch + step, s.epochs * steps_per_epoch))
        out["epoch_loss"].append(_epoch(net, seqs, profiles, sampler, opts, s, gen, tick, par))
        seconds = time.perf_counter() - t0
        out["seconds"] += seconds
        out["samples"] += len(seqs)
        if validate is not None and ((epoch + 1) % every == 0 or epoch + 1 == s.epochs):
            model.eval()
            out["valid"].append(par.score(validate))
            out["valid_epochs"].append(epoch + 1)
            model.train()
            stopper.add(out["valid"][-1], lambda: copy.deepcopy(model.state_dict()))
            out["best_epoch"] = out["valid_epochs"][stopper.best()[0]]
        log.info("mind epoch %d/%d: loss %.4f, %d samples, %.0f samples/s%s", epoch + 1, s.epochs, out["epoch_loss"][-1],
                 len(seqs), len(seqs) / max(seconds, 1e-9), f", valid {out['valid'][-1]:.4f}" if out["valid"] else "")
        if validate is not None and stopper.done():
            break
    if stopper.scores:
        model.load_state_dict(stopper.best()[1])
    model.eval()
    out["samples_per_s"] = out["samples"] / max(out["seconds"], 1e-9)
    return out


def _epoch(net: torch.nn.Module, seqs: Sequences, profiles: torch.Tensor, sampler: NegativeSampler,
           opts: list[torch.optim.Optimizer], s: TrainSettings, gen: torch.Generator, tick: Callable[[int], None] | None,
           par: Parallel) -> float:
    """One pass over the samples in a seeded order; returns the mean loss (over every process's rows)."""
    total = 0.0
    order = torch.randperm(len(seqs), generator=gen).numpy()
    model = net.module if hasattr(net, "module") else net
    for step, lo in enumerate(range(0, len(seqs), s.batch_size)):
        batch = order[lo:lo + s.batch_size]
        negatives = sampler.draw(s.negatives, gen)
        logits = model.draw_routing(batch.size, gen)  # the global batch's, drawn alike on every process
        mine = par.rows(batch.size)
        behaviors, targets, users = seqs.batch(batch[mine])
        loss = net(behaviors, profiles[users], targets, sampler.log_q(targets), negatives, sampler.log_q(negatives),
                   logits[mine])
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in opts:
            o.step()
        total += float(loss.detach()) * batch.size * par.weight
        if tick is not None and step % 50 == 0:
            tick(step)
    return par.total(total) / len(seqs)

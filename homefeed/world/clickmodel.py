"""The hidden click and purchase truth, shared by the log generator and the `Simulator`.

A homepage exposure of item i at 0-based position p to user u is clicked with probability
`sigmoid(logit)`, where

    logit = bias + affinity * (u_vec . i_vec)            static taste
          + quality * quality_i                          some items are simply better
          + cross * w(u, standard category of i)         user x category interest weight
          + sequence * (recent_u . i_vec)                 recent_u: decayed mean of items u just saw
          + sequence_category * [category of i among the last 3 seen]
          - position_decay * log1p(p)                    position bias
          - fatigue * (times i was already shown to u)   fatigue
          - price * |price tier_i - purchase power_u| / 4

The `recent_u` terms change from session to session, so a ranker that reads the user's behaviour
sequence (DIN, BST) can beat one that sees only fields. A click (or a page view) then leads on:
fav and cart with probability `sigmoid(bias + slope * affinity [+ click_bonus])`, a buy with
probability `buy_after_cart` after a cart or `direct_buy` without, times `repurchase_block` while the
category's repurchase cycle since the user's last buy in it has not passed.

The functions are numba-compiled and take scalars or numpy arrays alike.

    >>> theta = click_params(ClickTruth())
    >>> float(sigmoid(click_logit(theta, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)))  # doctest: +ELLIPSIS
    0.0066...
"""
from __future__ import annotations

import numpy as np
from numba import njit

from homefeed.world.spec import ClickTruth, Funnel

CLICK_TERMS: tuple[str, ...] = tuple(ClickTruth.model_fields)
FUNNEL_TERMS: tuple[str, ...] = tuple(Funnel.model_fields)


def click_params(click: ClickTruth) -> np.ndarray:
    """float64 (9,) in the order of CLICK_TERMS (bias, affinity, ..., price)."""
    return np.array([getattr(click, k) for k in CLICK_TERMS], dtype=np.float64)


def funnel_params(funnel: Funnel) -> np.ndarray:
    """float64 (7,) in the order of FUNNEL_TERMS (slope, fav_bias, ..., repurchase_block)."""
    return np.array([getattr(funnel, k) for k in FUNNEL_TERMS], dtype=np.float64)


@njit(cache=True)
def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@njit(cache=True)
def click_logit(theta, affinity, quality, cross, sequence, sequence_category, position, n_seen, price_gap):
    """Click logit; theta from `click_params`; other arguments scalars or equal-shape arrays."""
    return (theta[0] + theta[1] * affinity + theta[2] * quality + theta[3] * cross + theta[4] * sequence
            + theta[5] * sequence_category - theta[6] * np.log1p(position) - theta[7] * n_seen
            - theta[8] * price_gap)


@njit(cache=True)
def fav_cart_probs(phi, affinity, is_click):
    """(p_fav, p_cart) after a view (is_click=0) or a homepage click (is_click=1); phi from `funnel_params`."""
    z = phi[0] * affinity + phi[3] * is_click
    return sigmoid(phi[1] + z), sigmoid(phi[2] + z)


@njit(cache=True)
def buy_prob(phi, carted, blocked):
    """Probability of a buy given carted (0/1) and blocked (0/1: inside the category's repurchase cycle)."""
    return (carted * phi[4] + (1 - carted) * phi[5]) * (1 - blocked * (1 - phi[6]))

"""MIND multi-interest recall (Li et al., CIKM 2019): several interest vectors per user, each searched in the item index.

    routing.py   behaviour-to-interest dynamic routing, K'_u
    model.py     item tower, user tower, label-aware attention, sampled softmax
    profile.py   user profile codes (gender, age band, city, purchase power)
    samples.py   training sequences from events, the serving sequence, negative sampling
    train.py     the training loop, early stopping
    validate.py  the validation HitRate training stops on (a holdout when the dataset has no validation days)
    interests.py the served K'_u (its shift picked on validation) and how the interests' lists merge
    channel.py   the `mind` and `mind1` (K = 1) Recallers
    export.py    TorchScript / ONNX user tower, checked against the eager one
    evaluate.py  MIND-K vs MIND-1 vs other channels: HitRate@K and category diversity

    >>> from homefeed.recall.mind import MIND, MINDSettings
    >>> rec = MIND(settings=MINDSettings(model={"interests": 4})).fit(ds)     # doctest: +SKIP
"""
from homefeed.recall.mind.channel import MIND, MIND1, MIND1Settings, MINDSettings, ModelSettings, ServeSettings
from homefeed.recall.mind.train import TrainSettings

__all__ = ["MIND", "MIND1", "MIND1Settings", "MINDSettings", "ModelSettings", "ServeSettings", "TrainSettings"]

"""The server's round: attribution around any Flower strategy, as a chain of small steps.

``AttributedStrategy`` wraps an unmodified ``flwr.serverapp.strategy`` strategy: screen
(``screen``, with ``identity`` and ``weights``) -> detectors (``detect``) -> aggregate (the wrapped strategy) -> score
(``fedattr.strategies.scoring``) -> record (``fedattr.protocol.RoundRecord``). ``AGGREGATORS`` maps a
scenario's ``aggregation.strategy`` to a Flower strategy and the coalition rule of its round game.
"""

from fedattr.strategies.aggregators import AGGREGATORS, Aggregator, build_aggregator, check_aggregator
from fedattr.strategies.attributed import AttributedStrategy, RoundFailure
from fedattr.strategies.detect import DetectorStep
from fedattr.strategies.identity import IdentityBinder
from fedattr.strategies.screen import Screened, check_train_reply, screen_replies
from fedattr.strategies.weights import WeightPolicy

__all__ = ["AGGREGATORS", "Aggregator", "AttributedStrategy", "DetectorStep", "IdentityBinder", "RoundFailure",
           "Screened", "WeightPolicy", "build_aggregator", "check_aggregator", "check_train_reply", "screen_replies"]

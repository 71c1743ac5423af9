"""Flower strategies that aggregate and score every client every round."""

from fedattr.strategies.attributed_fedavg import AttributedFedAvg

#: registry name -> strategy class (robust aggregators join in later work)
AGGREGATORS = {"fedavg": AttributedFedAvg}

__all__ = ["AGGREGATORS", "AttributedFedAvg"]

"""Per-round data attribution in federated learning.

The round game ``v_t(S) = U(w_t + agg_S(g))`` (:class:`RoundGame`) evaluates coalitions of
clients' updates on a validation set (:class:`ModelUtility`) through one memo per round
(:class:`UtilityCache`) shared by every evaluator. Evaluators are small classes behind registry
names (``EVALUATORS``, :func:`make_evaluator`) with ``fit(game, seed)`` and results in
``values_``, ``n_evaluations_``, ``seconds_``; Monte-Carlo ones take composable stopping rules.

This package does not import Flower.
"""

from .base import EVALUATORS, BudgetExhausted, Evaluator, MonteCarloEvaluator, make_evaluator, register
from .cache import UtilityCache
from .cumulative import CumulativeValues
from .exact import (
    BetaShapley,
    ExactBanzhaf,
    ExactShapley,
    IndividualMarginal,
    LeastCore,
    LeaveOneOut,
    banzhaf_weights,
    beta_weights,
    semivalue_from_table,
    shapley_weights,
)
from .game import (
    FunctionGame,
    Game,
    RoundGame,
    TabularGame,
    indices_to_mask,
    mask_to_indices,
    masks_to_matrix,
    matrix_to_masks,
    popcount,
)
from .geometry import CGSV
from .layout import LayoutEntry, StateLayout, flatten_state, unflatten_state
from .sampling import BanzhafMSR, GTGShapley, TMCShapley, walk_permutations
from .stopping import (
    AllRules,
    AnyRule,
    EstimatorState,
    MaxEvaluations,
    MaxPermutations,
    MaxSamples,
    MaxTime,
    RankStability,
    RelativeChange,
    StandardError,
    StoppingRule,
)
from .utility import ENGINES, METRICS, ModelUtility
from .surrogate import (
    SMOOTH_METRIC,
    SURROGATE_METRICS,
    SurrogateGame,
    SurrogateShapley,
    fedavg_coefficients,
    surrogate_for,
    taylor_terms,
)
from .logit_surrogate import (
    LOGIT_ANCHORS,
    LogitSurrogateGame,
    LogitSurrogateShapley,
    choose_pairs,
    default_n_pairs,
    logit_surrogate_for,
)
from .control_variate import SURROGATE_KINDS, ControlVariateShapley

__all__ = [
    # games and utilities
    "ModelUtility", "METRICS", "ENGINES", "StateLayout", "LayoutEntry", "flatten_state", "unflatten_state",
    "Game", "RoundGame", "FunctionGame", "TabularGame", "UtilityCache",
    "indices_to_mask", "mask_to_indices", "masks_to_matrix", "matrix_to_masks", "popcount",
    # evaluators
    "EVALUATORS", "make_evaluator", "register", "Evaluator", "MonteCarloEvaluator", "BudgetExhausted",
    "IndividualMarginal", "LeaveOneOut", "ExactShapley", "ExactBanzhaf", "BetaShapley", "LeastCore",
    "TMCShapley", "GTGShapley", "BanzhafMSR", "CGSV", "SurrogateShapley", "ControlVariateShapley",
    "LogitSurrogateShapley",
    # second-order surrogate
    "SurrogateGame", "SURROGATE_METRICS", "SMOOTH_METRIC", "fedavg_coefficients", "taylor_terms", "surrogate_for",
    # logit-linear surrogate
    "LogitSurrogateGame", "LOGIT_ANCHORS", "logit_surrogate_for", "choose_pairs", "default_n_pairs", "SURROGATE_KINDS",
    "semivalue_from_table", "shapley_weights", "banzhaf_weights", "beta_weights", "walk_permutations",
    # stopping rules
    "StoppingRule", "EstimatorState", "MaxEvaluations", "MaxSamples", "MaxPermutations", "MaxTime",
    "StandardError", "RelativeChange", "RankStability", "AnyRule", "AllRules",
    # multi-round
    "CumulativeValues",
]

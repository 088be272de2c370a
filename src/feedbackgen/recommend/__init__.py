"""From feedback to recommendation results: choice models, ranking with predicted feedback, a simulated user.

    create_choice("ease").fit(dataset)              a choice model: will this user take this item?
    load_choice("models/ease")                      a saved one (is_choice_folder tells it from a generator)
    top_k(model, user_ids, k=10, dataset=dataset)   the one top-K ranking (CLI, Python, HTTP, simulator)
    recommend(model, dataset, user_ids, k=10)       top-K items per user, each with generated feedback
    evaluate_ranking({"mf": mf, ...}, dataset)      HR@K / NDCG@K / Recall@K, full and sampled protocols
    simulate(model, dataset, ["recs.parquet"])      a simulated user judges any recommender's lists
    fidelity(model, dataset)                        how far that simulated user matches real behaviour
"""

from feedbackgen.recommend.choice import (CHOICE_MODELS, DEFAULT_CHOICE_MODEL, ChoiceModel, Popularity,
                                          create_choice, is_choice_folder, load_choice)
from feedbackgen.recommend.fidelity import ANCHORS, fidelity, fidelity_markdown, write_fidelity
from feedbackgen.recommend.explain import read_id_list, recommend, write_recommendations
from feedbackgen.recommend.ranking import evaluate_ranking, top_k
from feedbackgen.recommend.recs import RecommendationsCheck, read_recommendations
from feedbackgen.recommend.simulate import Simulation, simulate
from feedbackgen.recommend.simulated_user import Calibration, SimulatedUser, calibrate_choice, calibrate_threshold
from feedbackgen.recommend.user_model import SimulatedUserModel
from feedbackgen.tables import markdown_table

__all__ = ["ANCHORS", "CHOICE_MODELS", "DEFAULT_CHOICE_MODEL", "Calibration", "ChoiceModel", "Popularity",
           "RecommendationsCheck", "SimulatedUser", "SimulatedUserModel", "Simulation", "calibrate_choice", "calibrate_threshold",
           "create_choice", "evaluate_ranking", "fidelity", "fidelity_markdown", "is_choice_folder", "load_choice",
           "markdown_table", "read_id_list", "read_recommendations", "recommend", "simulate", "top_k", "write_fidelity",
           "write_recommendations"]

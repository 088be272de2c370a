"""From feedback to recommendation results: ranking with predicted feedback, and a simulated user.

    recommend(model, dataset, user_ids, k=10)       top-K items per user, each with generated feedback
    evaluate_ranking({"mf": mf, ...}, dataset)      HR@K / NDCG@K, full and sampled protocols
    simulate(model, dataset, ["recs.parquet"])      a simulated user judges any recommender's lists
    fidelity(model, dataset)                        how far that simulated user matches real behaviour
"""

from feedbackgen.recommend.fidelity import ANCHORS, fidelity, fidelity_markdown, write_fidelity
from feedbackgen.recommend.ranking import (Popularity, evaluate_ranking, read_id_list, recommend,
                                           write_recommendations)
from feedbackgen.recommend.simulate import RecommendationsCheck, Simulation, read_recommendations, simulate
from feedbackgen.recommend.simulated_user import Calibration, SimulatedUser, calibrate_choice, calibrate_threshold
from feedbackgen.recommend.tables import markdown_table

__all__ = ["ANCHORS", "Calibration", "Popularity", "RecommendationsCheck", "SimulatedUser", "Simulation",
           "calibrate_choice", "calibrate_threshold", "evaluate_ranking", "fidelity", "fidelity_markdown", "markdown_table", "read_id_list",
           "read_recommendations", "recommend", "simulate", "write_fidelity", "write_recommendations"]

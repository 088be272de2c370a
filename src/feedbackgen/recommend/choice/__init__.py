"""Choice models: will this user take this item? Implicit-feedback recommenders behind one interface.

    model = create_choice("ease").fit(dataset)      # hyper-parameters chosen on the valid split
    model.score(["u1", "u1"], ["i1", "i2"])         # float64, higher = more likely chosen
    model.recommend(["u1"], k=10)                   # user_id, rank, item_id, score
    model.save("models/ease"); load_choice("models/ease")

Models: popularity, itemknn (Sarwar et al. 2001), ease (Steck 2019), als (Hu, Koren & Volinsky
2008) and bpr (Rendle et al. 2009) through the `implicit` library, and hybrid (a collaborative
model blended with MiniLM content embeddings of the items' text).
"""

from feedbackgen.recommend.choice.base import (CHOICE_MODELS, UNKNOWN_ITEM_SCORE, ChoiceConfig, ChoiceModel,
                                               Interactions, create_choice, is_choice_folder, load_choice,
                                               register_choice)
from feedbackgen.recommend.choice.factors import ALS, BPR
from feedbackgen.recommend.choice.hybrid import Hybrid
from feedbackgen.recommend.choice.neighbours import EASE, ItemKNN, Popularity

DEFAULT_CHOICE_MODEL = "ease"  # the best on Musical Instruments (bench/ranking.py) and fits 1M interactions in seconds

__all__ = ["ALS", "BPR", "CHOICE_MODELS", "DEFAULT_CHOICE_MODEL", "EASE", "UNKNOWN_ITEM_SCORE", "ChoiceConfig",
           "ChoiceModel", "Hybrid", "Interactions", "ItemKNN", "Popularity", "create_choice", "is_choice_folder",
           "load_choice", "register_choice"]

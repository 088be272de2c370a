from feedbackgen.features.profiles import Profiles, interaction_features, item_features, user_features

__all__ = ["Profiles", "interaction_features", "item_features", "user_features"]

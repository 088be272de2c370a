"""`feedbackgen.env`: the simulated user as a Gymnasium environment, for training and testing recommenders.

    import gymnasium, feedbackgen.env
    env = gymnasium.make("feedbackgen/SimulatedUser-v0", dataset_dir="data/mi", simulator="models/user")
    env = feedbackgen.env.make_env("data/mi", simulator="models/user", slate_size=10)   # the same, unwrapped

Importing this package registers the id `feedbackgen/SimulatedUser-v0` with Gymnasium (or use
`gymnasium.make("feedbackgen.env:feedbackgen/SimulatedUser-v0", ...)`, which imports it).
"""

import gymnasium

from feedbackgen.env.environment import SimulatedUserEnv, make_env

ENV_ID = "feedbackgen/SimulatedUser-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="feedbackgen.env.environment:make_env")

__all__ = ["ENV_ID", "SimulatedUserEnv", "make_env"]

"""The agent side of a rollout: prompts, parsing what the model wrote, and keeping messages within budget."""

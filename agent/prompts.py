"""System prompts, kept apart from the loops that send them so a prompt change is a one-file diff."""

TOY_SYSTEM_PROMPT = "You are a terse assistant. Follow the instruction exactly."

"""The planner env: a policy that splits a word problem into subproblems for a frozen executor model."""

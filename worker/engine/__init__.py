"""The compute library: model, training, tasks, pruning. Imports no web, database or queue code."""

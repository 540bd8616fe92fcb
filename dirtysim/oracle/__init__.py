"""The ground truth of a run, kept apart from dirty tracking (what a write changed, and where)."""

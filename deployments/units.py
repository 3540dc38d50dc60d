"""Units shared by the pure modules (planner, placement, downloads): one definition each."""

GB = 10**9  # decimal gigabyte, as GPU vendors and the planner count memory

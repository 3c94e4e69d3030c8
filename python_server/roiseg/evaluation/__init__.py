"""Scoring predictions against references (metrics) and models side by side (compare)."""

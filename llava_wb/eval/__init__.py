"""Evaluation: greedy answers for held-out shards, exact match per question type, majority baseline."""

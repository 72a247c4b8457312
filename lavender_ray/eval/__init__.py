"""Evaluation: attention probes and reports (benchmark metrics arrive with the evaluation issue)."""

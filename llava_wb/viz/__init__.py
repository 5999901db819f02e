"""Plots for notebooks: data summaries and samples now; token-merge overlays later."""

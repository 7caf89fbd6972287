"""Figures that look inside a model: attention, embedding filters, positions."""

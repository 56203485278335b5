"""Figures, GIFs and HTML reports."""

"""Streamlit-side helpers shared by the pages: view state (range, filters in the URL), cached queries, theme."""

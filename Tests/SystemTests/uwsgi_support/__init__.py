"""Helpers of the uwsgi interop tests: start uWSGI with the Flask app and a real nginx with a temporary config."""

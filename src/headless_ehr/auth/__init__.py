"""Authorisation: the Principal every data call receives, scopes and policies."""

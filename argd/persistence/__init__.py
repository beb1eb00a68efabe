"""Persistence shared by the API and the workers: settings, tables, sessions, job state, artifact store.

Nothing here imports torch, so the API can use it without loading the engine.
"""

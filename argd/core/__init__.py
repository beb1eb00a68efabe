"""The ML engine: pure library (torch, numpy, safetensors).

It imports nothing from api/, worker/ or persistence, so a one-shot run needs no server.
"""

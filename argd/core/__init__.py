"""The ML engine: pure library (torch, numpy, safetensors). Imports nothing from api/, worker/ or persistence."""

"""Benchmarks of the engine: `argd bench defense` (ARGD against fine-tuning and NAD on seven attacks) and
`argd bench speed` (epoch time of each method beside the bare forward/backward passes)."""

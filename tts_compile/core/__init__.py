"""The generic machinery every optimized stage is built from; nothing here knows a model.

`config` (options, YAML), `buckets` (static shapes, ladders, the window planner), `receptive` (the measured
receptive field), `runner` (compile and capture), `guard` (on/off, failure, fallback, counters), `verify`
(tolerances and the comparison with the original module), `weights` (copies and fingerprints), `rng`
(generator state kept as found), `progress`.
"""

"""The command line (`python -m tts_compile bench | probe | client | options`) and what it runs: the vocoder
benchmark, the load client for a running service and the options' documentation."""

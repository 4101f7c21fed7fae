"""The command line (`python -m tts_compile bench | probe | client`) and what it runs: the vocoder benchmark and
the load client for a running service."""

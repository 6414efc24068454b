"""A generated corpus of malformed requests for the origin, the agent and the tracker.

``wire`` sends a request exactly as written (raw socket: no client normalises
``..`` or fixes a Content-Length) and reads the answer; ``registry`` and
``tracker`` build the corpus from combinations (every bad name on every
route, every bad digest on every digest-taking route, ...). Each probe says
which contract its answer must meet (``Expect``); tests/test_bad_input_corpus.py
sends them all.
"""

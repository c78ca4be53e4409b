"""After the deploy: what the endpoint sees compared with what the model was trained on (drift),
and whether a canary version should take all the traffic or none.

Numpy only (no TensorFlow, no web framework), so the prediction server, the monitoring CLI and
the pipeline steps share it: ``reference`` (what a model version carries), ``sampler`` (the
server's bounded sample of requests), ``drift`` (the two-sample tests), ``report`` (HTML and
JSON) and ``canary`` (the promote-or-roll-back rule).
"""

"""`mirror gateway up|down`: the rules that bring a gateway's traffic to the proxy."""

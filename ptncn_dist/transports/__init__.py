"""How a layer's messages travel: in-process, Ray actor calls, direct ZeroMQ links, compiled graphs."""

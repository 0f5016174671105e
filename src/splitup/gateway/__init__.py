"""The gateway: an OpenAI-compatible HTTP API that runs requests through the market (via the SDK), the
JSON views the web console reads, and the console itself (``splitup gateway start``)."""

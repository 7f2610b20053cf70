"""Device harness: push artifacts to phones, simulators or the host; run and measure them."""

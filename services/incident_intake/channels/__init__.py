"""One module per channel: each turns its sender's native payload into `tracking.Signal`s."""

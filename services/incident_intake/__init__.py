"""The intake service: each channel's native input becomes the contract's input events (design §7b)."""

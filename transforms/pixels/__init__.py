"""Arrays and bytes: the value range and dtype (normalize), encoders, encoded image
headers, decoders in a child process, contact sheets. The bottom package: it imports
only `transforms.errors`."""

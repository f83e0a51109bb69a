"""`advisor tui`: a Textual app to explore plans (see `tui.app`)."""

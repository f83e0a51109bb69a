"""The TUI's views: figures, split chart, timeline, notice, predicted-vs-measured table."""

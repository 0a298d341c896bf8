"""`desanet tui`: the technician's terminal UI (Textual), Bahasa Indonesia first."""

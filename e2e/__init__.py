"""End-to-end suites: real Voxa processes driven by real clients (the official phoenix JS client)."""

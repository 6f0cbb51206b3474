"""Voxa's Python client: Phoenix socket (`phoenix`), voice SDK (`voice`), audio (`media`), CLI (`cli`)."""

"""Code shared by Voxa's services: token claims and rights, TURN credentials, logging, the CLI."""

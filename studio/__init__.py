"""minimind-studio's terminal front end: the CLI and the Textual studio."""

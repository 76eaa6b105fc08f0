"""minimind-studio's engine: everything that trains, generates and stores. Never imports the studio."""

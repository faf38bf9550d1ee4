"""Runtime shared by every lumiserve service: server host, settings, errors, metrics, logging, images."""

"""One LightningModule per file; configs name them by class path."""

"""One LightningModule per file (configs name them by class path), on the common base in base.py;
the text models share text_generation.py, the visualizers visiontales/visualizer.py."""

"""LightningDataModules for the datasets of both papers (vist.py, ...) and their synthetic
stand-ins (synthetic.py). Configs name them by class path, e.g. `data_modules.vist.VISTDataModule`."""

"""LightningDataModules for the datasets of both papers (vist.py, flintstones.py), the readers of
their on-disk formats (vist_format.py, flintstones_format.py: no Lightning, so that `data check`
and `data synth` start quickly) and their synthetic stand-ins (synthetic.py). Configs name the
data modules by class path, e.g. `data_modules.vist.VISTDataModule`."""

"""Auto-Encoding Variational Bayes (Kingma & Welling 2013) in Pyro."""

__version__ = "0.1.0"

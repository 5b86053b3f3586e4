"""Auto-Encoding Variational Bayes (Kingma & Welling 2013) in Pyro.

The Python API, with plain arguments (no Hydra, no OmegaConf)::

    import pyro_vae

    vae = pyro_vae.VAE.mlp(x_dim=784, latent_dim=20)          # or VAE(encoder, decoder, prior)
    elbo = pyro_vae.build_estimator("stl", num_particles=5)   # an ELBO that pyro.infer.SVI takes
    summary = pyro_vae.train(vae, x, "runs/mine", test=x_test, estimator="stl", epochs=5)
    pyro_vae.evaluate(vae, x_test, num_samples=1000)          # ELBO and importance-sampled log p(x)
    loaded = pyro_vae.load_run("runs/mine")                   # the model back, at a checkpoint
    pyro_vae.export_model("runs/mine", "exported")            # plain torch modules, no pyro-vae

The command line (``pyro-vae train key=value ...``, :mod:`pyro_vae.config`) is a thin
layer that turns a configuration into these same objects.
"""

from .conv import ConvDecoder, ConvEncoder
from .data import (
    Dataset,
    Minibatches,
    RunData,
    load_dataset,
    tensor_dataset,
    tensor_from_torch_data,
)
from .diagnostics import inference_gaps, kl_per_dimension, mutual_information, plot_diagnostics
from .errors import (
    ArgumentError,
    CheckpointError,
    ConfigError,
    DataError,
    DataNotFoundError,
    EstimatorError,
    NonFiniteError,
    PyroVAEError,
    RunDirError,
    RunMismatchError,
    TrainingError,
    TrainingInterrupted,
)
from .estimators import ESTIMATORS, build_estimator
from .evaluate import active_units, evaluate, importance_log_likelihood, mean_elbo
from .guides import IAF, DiagonalGaussian, FullCovariance, GuideFamily, Planar, build_guide
from .likelihoods import (
    LIKELIHOODS,
    Bernoulli,
    Beta,
    Categorical,
    ContinuousBernoulli,
    Family,
    Gaussian,
    Laplace,
    Likelihood,
    NegativeBinomial,
    Poisson,
    build_likelihood,
)
from .marginal import appendix_d_log_likelihood
from .methods import AEVB, MCEM, METHODS, WakeSleep, build_method
from .model import VAE
from .networks import GaussianEncoder, Head, MLPDecoder
from .optim import build_optimizer, optimizer_factory
from .plots import plot_figures
from .priors import (
    Factorized,
    MixtureOfGaussians,
    Prior,
    StandardNormal,
    VampPrior,
    build_prior,
)
from .runs import LoadedRun, evaluate_run, load_data, load_run, plot_run
from .training import (
    Callback,
    MLflowLogger,
    RunDir,
    TensorBoardLogger,
    Trainer,
    TrainingPosition,
    train,
)
from .version import __version__

# The variance lab, run comparison and export: loaded on first use.
_LAZY = {
    "compare_runs": "compare",
    "estimator_variance": "variance",
    "export_model": "export",
    "gradient_statistics": "variance",
    "gradient_variance": "variance",
    "variance_lab": "variance",
    "write_report": "variance",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ConvDecoder",
    "ConvEncoder",
    "build_likelihood",
    "Poisson",
    "NegativeBinomial",
    "MLPDecoder",
    "Laplace",
    "Head",
    "Family",
    "ContinuousBernoulli",
    "Categorical",
    "Beta",
    "LIKELIHOODS",
    "AEVB",
    "ESTIMATORS",
    "MCEM",
    "METHODS",
    "VAE",
    "ArgumentError",
    "Bernoulli",
    "Callback",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DataNotFoundError",
    "Dataset",
    "DiagonalGaussian",
    "FullCovariance",
    "GuideFamily",
    "IAF",
    "Planar",
    "EstimatorError",
    "Factorized",
    "Gaussian",
    "GaussianEncoder",
    "Likelihood",
    "LoadedRun",
    "MLflowLogger",
    "Minibatches",
    "MixtureOfGaussians",
    "NonFiniteError",
    "Prior",
    "PyroVAEError",
    "RunData",
    "RunDir",
    "RunDirError",
    "RunMismatchError",
    "StandardNormal",
    "TensorBoardLogger",
    "Trainer",
    "TrainingError",
    "TrainingInterrupted",
    "TrainingPosition",
    "VampPrior",
    "WakeSleep",
    "__version__",
    "appendix_d_log_likelihood",
    "build_estimator",
    "build_guide",
    "build_method",
    "build_optimizer",
    "build_prior",
    "evaluate",
    "inference_gaps",
    "kl_per_dimension",
    "mutual_information",
    "plot_diagnostics",
    "evaluate_run",
    "importance_log_likelihood",
    "active_units",
    "load_data",
    "load_dataset",
    "load_run",
    "mean_elbo",
    "optimizer_factory",
    "plot_figures",
    "plot_run",
    "tensor_dataset",
    "tensor_from_torch_data",
    "train",
    *_LAZY,
]

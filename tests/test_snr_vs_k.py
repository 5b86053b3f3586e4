"""Rainforth et al. (2018)'s shapes of gradient SNR against K (experiments/snr_vs_k.py) on a
tiny VAE: IWAE's encoder SNR falls like 1/sqrt(K), its decoder SNR rises like sqrt(K),
DReG's encoder SNR does not fall, the project's STL (the ELBO's, L particles averaged)
rises like sqrt(K) and VIMCO's encoder SNR is far below DReG's.

The model: ``VAE.mlp(16, 2, [8])`` (Bernoulli decoder, N(0, I) prior, torch's initialisation
under ``torch.manual_seed(0)``), untrained, on the 100 noisy 4x4 bar images of
``tests/conftest.py`` (seed 0); the lab's mean SNR (mean over parameters of |E g| / sd g)
from R = 200 gradient estimates on all 100 images at K = 1, 10, 100, slopes fitted to
log SNR against log K by the study's own code.

The tolerances below come from this setting at seeds 0 to 7 (seed s for both the model and
the data; the test runs seed 0, whose values are given first):

====================  =====================  ==============================
slope                 seed 0                 seeds 0-7
====================  =====================  ==============================
IWAE encoder          -0.43                  -0.53 .. -0.33 (mean -0.42)
IWAE decoder          +0.48                  +0.40 .. +0.55 (mean +0.47)
DReG encoder          +0.17                  -0.06 .. +0.42
DReG - IWAE encoder   +0.60                  +0.27 .. +0.91
STL encoder, decoder  +0.51, +0.50           +0.49 .. +0.51
VIMCO / DReG encoder  0.08 (K=10), 0.02      at most 0.20 (K=10), 0.14 (K=100)
====================  =====================  ==============================

IWAE's encoder slope sits a little above -0.5 because the lab's mean SNR cannot fall below
about sqrt(2 / (pi R)) = 0.056 (the |mean| of R draws of noise), and IWAE's encoder SNR at
K = 100 is only 0.1 to 0.2: the floor lifts the last point. The runtime is about 20-25 s on
one core of a busy 2-core machine (one fixture measures every estimator once).
"""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from pyro_vae.model import VAE
from tests.conftest import bars_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "snr_vs_k.py"
spec = importlib.util.spec_from_file_location("snr_vs_k", SCRIPT)
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)

SEED = 0
KS = [1, 10, 100]
REPEATS = 200
POINTS = 100


def tiny_vae(seed: int = SEED) -> tuple[VAE, torch.Tensor]:
    torch.manual_seed(seed)
    vae = VAE.mlp(16, 2, [8], "bernoulli", num_data=POINTS)
    return vae, torch.from_numpy(bars_dataset(POINTS, 4, seed))


@pytest.fixture(scope="module")
def rows():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread avoids hand-offs on a busy CPU
    try:
        vae, x = tiny_vae()
        at = {"checkpoint": "init", "epoch": 0}
        return study.snr_rows(
            vae,
            x,
            torch.arange(POINTS),
            KS,
            ["iwae", "dreg", "stl", "vimco"],
            REPEATS,
            SEED,
            at,
            log=lambda *_: None,
        )
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def slopes(rows):
    return {(s["estimator"], s["group"]): s["slope"] for s in study.slope_rows(rows)}


def snr(rows, estimator, group, k):
    (row,) = [r for r in rows if (r["estimator"], r["group"], r["K"]) == (estimator, group, k)]
    return row["mean_snr"]


def test_iwae_encoder_snr_falls_as_one_over_sqrt_k(slopes):
    # -0.5 +- 0.2: seeds 0-7 gave -0.53 .. -0.33, the noise floor pulling it towards 0.
    # A flat or rising encoder SNR (DReG's, STL's) is far outside.
    assert -0.7 < slopes["iwae", "encoder"] < -0.3


def test_iwae_decoder_snr_rises_as_sqrt_k(slopes):
    # +0.5 +- 0.15: seeds 0-7 gave +0.40 .. +0.55.
    assert 0.35 < slopes["iwae", "decoder"] < 0.65


def test_dreg_encoder_snr_does_not_fall(slopes):
    # Seeds 0-7 gave -0.06 .. +0.42: > -0.15 allows the flattest of them and still fails
    # for a decay like IWAE's (-0.5); and it is at least 0.2 above IWAE's slope (seeds:
    # 0.27 .. 0.91 above), so DReG's w^2 weights (which w would turn into IWAE) matter.
    assert slopes["dreg", "encoder"] > -0.15
    assert slopes["dreg", "encoder"] > slopes["iwae", "encoder"] + 0.2
    # the decoder gradient is IWAE's, and with the same seed the same draws
    assert slopes["dreg", "decoder"] == pytest.approx(slopes["iwae", "decoder"])


def test_project_stl_averages_independent_particles(slopes):
    # The project's stl is the L-sample ELBO: the mean of L independent single-sample
    # estimates, so both SNRs grow as sqrt(L) exactly in expectation (seeds: 0.49 .. 0.51).
    assert slopes["stl", "encoder"] == pytest.approx(0.5, abs=0.05)
    assert slopes["stl", "decoder"] == pytest.approx(0.5, abs=0.05)


def test_vimco_encoder_snr_is_far_below_dregs(rows):
    # A score-function estimator: seeds 0-7 gave VIMCO/DReG encoder SNR <= 0.20 at K=10 and
    # <= 0.14 at K=100; 0.3 leaves room and still fails for a reparameterised-like SNR.
    for k in (10, 100):
        assert snr(rows, "vimco", "encoder", k) < 0.3 * snr(rows, "dreg", "encoder", k)


def test_study_writes_its_table_and_figure(rows, slopes, tmp_path):
    text = study.markdown(rows, "# header")
    # the first table is the mean SNR's slopes: checkpoint, estimator, encoder (all K), ...
    line = next(line for line in text.splitlines() if line.startswith("| init | iwae |"))
    assert float(line.split("|")[3]) == pytest.approx(slopes["iwae", "encoder"], abs=0.005)
    path = study.plot(rows, tmp_path / "snr.png", "tiny VAE")
    assert path.stat().st_size > 0


def test_iwae_stl_is_stl_at_one_particle_and_iwae_on_the_decoder():
    """The IWAE-STL estimator (``estimator=iwae_stl``): at K=1 it is STL (same draws, same
    gradient); at any K its decoder gradient is IWAE's. R=5 estimates suffice, as these are
    equalities."""
    vae, x = tiny_vae()
    got = study.snr_rows(
        vae,
        x[:20],
        torch.arange(20),
        [1, 5],
        ["iwae", "stl", "iwae_stl"],
        5,
        SEED,
        {"checkpoint": "init"},
        log=lambda *_: None,
    )
    for group in ("encoder", "decoder"):
        assert snr(got, "iwae_stl", group, 1) == pytest.approx(snr(got, "stl", group, 1))
    assert snr(got, "iwae_stl", "decoder", 5) == pytest.approx(snr(got, "iwae", "decoder", 5))
    assert snr(got, "iwae_stl", "encoder", 5) != pytest.approx(snr(got, "iwae", "encoder", 5))


def test_loglog_slope_of_a_power_law():
    ks = [1, 10, 100, 1000]
    assert study.loglog_slope(ks, [3 * k**-0.5 for k in ks]) == pytest.approx(-0.5)
    assert math.isnan(study.loglog_slope([1], [1.0]))

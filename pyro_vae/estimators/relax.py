"""RELAX: REBAR's control variate plus a learned network (Grathwohl et al. 2018)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import refuse
from .base import EstimatorError, Layout, register
from .rebar import REBAR_ELBO, Draw


@register("relax")
class RELAX_ELBO(REBAR_ELBO):
    """REBAR (:class:`~pyro_vae.estimators.rebar.REBAR_ELBO`) with the control variate of
    Grathwohl et al. (2018, sec. 3.3, "discrete RELAX")::

        c(s) = eta f(s) + r_rho(s),   s = sigma_lambda(z)
        g_l = [f(b) - c(s~)] d log q(b)/dl + dc(s)/dl - dc(s~)/dl + (df/dl)(b)

    r_rho is an MLP on each datapoint's relaxed latents (every latent site's value
    concatenated; ``hidden_dim`` tanh units, then one linear output, which starts at zero,
    so RELAX starts as REBAR). Any differentiable c keeps the estimator unbiased; eta,
    lambda and rho are trained together to minimise the variance (REBAR's second-moment
    objective on the logits' gradient, at every training step). With
    ``learn_control=false`` rho stays at its start (zero: REBAR). Needs every latent site
    in exactly the plates that hold every site (a VAE's data plate), so that a datapoint's
    latents are a vector; otherwise refused by name.
    """

    name = "relax"

    def __init__(
        self,
        num_particles: int = 1,
        eta: float = 1.0,
        temperature: float = 0.5,
        learn_control: bool = True,
        hidden_dim: int = 100,
        max_plate_nesting: int | None = None,
    ):
        super().__init__(num_particles, eta, temperature, learn_control, max_plate_nesting)
        if not (
            isinstance(hidden_dim, int) and not isinstance(hidden_dim, bool) and hidden_dim > 0
        ):
            raise refuse("hidden_dim", hidden_dim, "an integer >= 1")
        self.hidden_dim = hidden_dim

    def make_net(self, input_dim: int) -> nn.Module:
        net = nn.Sequential(
            nn.Linear(input_dim, self.hidden_dim), nn.Tanh(), nn.Linear(self.hidden_dim, 1)
        )
        nn.init.zeros_(net[2].weight)
        nn.init.zeros_(net[2].bias)
        return net

    def _per_unit(self, values: dict[str, torch.Tensor], layout: Layout) -> torch.Tensor:
        """The latents of each particle and unit as one vector: [L, U, D]."""
        parts = []
        units = tuple(f.size for f in layout.units)
        for name, value in values.items():
            draw: Draw = self._drawer.draws[name]
            batch = draw.site.shape[: len(draw.site.shape) - draw.site.event_dims]
            expected = (layout.num_particles,) + (1,) * (layout.nesting - len(units)) + units
            if not layout.local or tuple(batch) != expected:
                raise EstimatorError(
                    f"estimator={self.name}'s network r(s) takes each datapoint's latents as a "
                    f"vector, but site {name!r} has batch shape {tuple(batch)[1:]} (not the data "
                    f"plate's {units}); use estimator=rebar"
                )
            parts.append(value.reshape(layout.num_particles, layout.shape[1], -1))
        return torch.cat(parts, dim=-1)

    def net_input_dim(self, draws: dict[str, Draw], layout: Layout) -> int:
        return sum(
            int(d.site.flat(d.b).shape[-1]) if d.site.event_dims else 1 for d in draws.values()
        )

    def extra_control(self, values: dict[str, torch.Tensor], layout: Layout) -> Any:
        inputs = self._per_unit(values, layout)
        return self.control.net(inputs).squeeze(-1)

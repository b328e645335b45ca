"""nblib: the small library behind the executable book on implicit regularization.

    reg(θ) = (1/n) Σ_i ‖∇_θ h(x_i; θ)‖²                           implicit_regularizer (and _and_grad),
                                                                  for h(params, x) or any nn.Module
    θ ← θ − η ∇ [(1/B) Σ_b (h(x_b; θ) − y_b − σZ_b)² + λ·reg(θ)]  label_noise_sgd (many chains at once)
    θ ← θ − η ∇ [L(θ) + λ·reg(θ)]                                 regularized_gd (the same loop, σ = 0)

Layers: the core (regularizer, label_noise, trajectory, runtime) and the models (models) below; the
book's ledger and figures (claims, style, plots) and one module per chapter topic (relu_1d, one_point,
matrix_sensing, weight_norm, path_sgd) above. Nothing below imports anything above.
"""
from .claims import ClaimFailed, Ledger, glue
from .module_chains import stack_modules
from .label_noise import full_data_loss, implicit_lambda, label_noise_sgd, regularized_gd
from .seeds import book_seeds, seed_offset, substream
from .regularizer import (ClosedForm, closed_form_of, implicit_regularizer, implicit_regularizer_and_grad,
                          per_example_grads, per_example_sq_grad_norms, with_closed_form)
from .style import COLORS, use_book_style
from .trajectory import DivergenceError, Trajectory

__all__ = [
    "ClaimFailed", "ClosedForm", "COLORS", "DivergenceError", "Ledger", "Trajectory", "closed_form_of",
    "full_data_loss", "glue", "implicit_lambda", "implicit_regularizer",
    "implicit_regularizer_and_grad", "label_noise_sgd",
    "per_example_grads", "per_example_sq_grad_norms", "regularized_gd", "stack_modules", "use_book_style",
    "with_closed_form",
    "book_seeds", "seed_offset", "substream",
]

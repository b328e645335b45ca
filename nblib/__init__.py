"""nblib: the small library behind the executable book on implicit regularization.

    reg(θ) = (1/n) Σ_i Σ_k ‖∇_θ h_k(x_i; θ)‖²                     implicit_regularizer (and _and_grad),
                                                                  for h(params, x) or any nn.Module
    θ ← θ − η ∇ [(1/B) Σ_b ‖h(x_b; θ) − y_b − σZ_b‖² + λ·reg(θ)]  label_noise_sgd (many chains at once)
    θ ← θ − η ∇ [L(θ) + λ·reg(θ)]                                 regularized_gd (the same loop, σ = 0)

Three parts, each importing only the ones before it:

    nblib.core       the loop (label_noise), chains of an nn.Module (module_chains), the regularizer
                     (regularizer; module_reg with one rule per layer type in rules/), sharpness, the
                     result and error types (trajectory), input checks (validate), CPU settings (runtime)
    nblib.book       what the book adds around a run: the claims ledger and glue (claims), the replicates'
                     seeds (replicates), the figure style and recurring figures (style, plots), statistics
    nblib.chapters   each chapter's own models and experiments: models (the functional models with closed
                     forms), relu_1d, one_point, matrix_sensing, weight_norm, network_size, path_sgd

This namespace is the core's API.
"""
from . import book  # noqa: F401  (nblib.book: the book's helpers, not part of the API)
from .core.label_noise import full_data_loss, implicit_lambda, label_noise_sgd, regularized_gd
from .core.module_chains import stack_modules
from .core.regularizer import (ClosedForm, implicit_regularizer, implicit_regularizer_and_grad,
                               per_example_sq_grad_norms, with_closed_form)
from .core.sharpness import top_hessian_eigenvalue
from .core.trajectory import DivergenceError, Trajectory

__all__ = [
    "label_noise_sgd", "regularized_gd", "implicit_lambda", "full_data_loss", "implicit_regularizer",
    "implicit_regularizer_and_grad", "per_example_sq_grad_norms", "stack_modules", "top_hessian_eigenvalue",
    "ClosedForm", "with_closed_form", "Trajectory", "DivergenceError",
]

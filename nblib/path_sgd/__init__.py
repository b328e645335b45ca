"""Path-norm, Path-SGD and rescaling for layered ReLU networks, the digits data, and one training loop.

    optim   the network (layered_relu_mlp), path_norm, path_kappa, PathSGD, rescaling, norms
    data    digits_split, corrupt_labels
    train   train (one minibatch loop with a loss hook, returning a Trajectory), train_in_lockstep
            (several models on one minibatch sequence), error rates
    bank    WidthBank (K one-hidden-layer networks of different widths trained as one module)
"""
from .bank import WidthBank
from .data import corrupt_labels, digits_split
from .optim import (PathSGD, layered_relu_mlp, linear_layers, network_norms, path_kappa, path_norm,
                    random_rescaling_factors, rescale_hidden_units, unbalance, weight_decay_norm)
from .train import (cross_entropy, error_rate, evaluate, summed_cross_entropy, train,
                    train_in_lockstep)

__all__ = [
    "PathSGD", "WidthBank", "corrupt_labels", "cross_entropy", "digits_split", "error_rate", "evaluate",
    "layered_relu_mlp", "linear_layers", "network_norms", "path_kappa", "path_norm",
    "random_rescaling_factors", "rescale_hidden_units", "summed_cross_entropy", "train",
    "train_in_lockstep", "unbalance", "weight_decay_norm",
]

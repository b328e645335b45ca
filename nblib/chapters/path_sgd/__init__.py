"""Path-norm, Path-SGD and rescaling for layered ReLU networks, the digits data, and one training loop.

    optim   the network (layered_relu_mlp), path_norm, path_kappa, PathSGD, rescaling, norms
    data    digits_split, corrupt_labels
    train   train (one minibatch loop with a loss hook, returning a Trajectory), train_in_lockstep
            (several models on one minibatch sequence), error rates
    bank    WidthBank (K one-hidden-layer networks of different widths trained as one module)
    stack   NetStack (K networks of one architecture as one module), StackOptimizer (SGD, AdaGrad or
            Path-SGD per network), train_stack (all of them on the minibatches of R replicates at once)
"""
from .bank import WidthBank
from .data import corrupt_labels, digits_split
from .optim import (PathSGD, layered_relu_mlp, linear_layers, network_norms, path_kappa, path_norm,
                    random_rescaling_factors, rescale_hidden_units, unbalance, weight_decay_norm)
from .stack import (NetStack, StackOptimizer, stack_kappa, stack_outputs, stack_path_norm,
                    train_stack)
from .train import (cross_entropy, error_rate, evaluate, summed_cross_entropy, train,
                    train_in_lockstep)

__all__ = [
    "NetStack", "PathSGD", "StackOptimizer", "WidthBank", "corrupt_labels", "cross_entropy", "digits_split",
    "error_rate", "evaluate", "layered_relu_mlp", "linear_layers", "network_norms", "path_kappa", "path_norm",
    "random_rescaling_factors", "rescale_hidden_units", "stack_kappa", "stack_outputs", "stack_path_norm",
    "summed_cross_entropy", "train", "train_in_lockstep", "train_stack", "unbalance", "weight_decay_norm",
]

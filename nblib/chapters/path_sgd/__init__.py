"""Path-norm, Path-SGD and rescaling for layered ReLU networks, the digits data, and the classifiers' trainer.

    optim   the network (layered_relu_mlp), path_norm, path_kappa, PathSGD, rescaling, norms
    data    digits_split, corrupt_labels
    stack   NetStack (K networks of one depth as one module, narrower ones zero-padded), StackOptimizer
            (the step rules SGD with or without momentum, AdaGrad and Path-SGD, one per network),
            train_stack (the one minibatch trainer of the classification chapters: all networks on
            the minibatches of R replicates at once, with a loss-target stop)
"""
from .data import corrupt_labels, digits_split
from .optim import (PathSGD, layered_relu_mlp, linear_layers, network_norms, path_kappa, path_norm,
                    random_rescaling_factors, rescale_hidden_units, unbalance, weight_decay_norm)
from .stack import (STEP_RULES, NetStack, StackOptimizer, evaluate_stack, stack_kappa, stack_outputs,
                    stack_path_norm, train_stack)

__all__ = [
    "STEP_RULES", "NetStack", "PathSGD", "StackOptimizer", "corrupt_labels", "digits_split", "evaluate_stack",
    "layered_relu_mlp", "linear_layers", "network_norms", "path_kappa", "path_norm", "random_rescaling_factors",
    "rescale_hidden_units", "stack_kappa", "stack_outputs", "stack_path_norm", "train_stack", "unbalance",
    "weight_decay_norm",
]

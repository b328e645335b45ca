"""The network-size experiment on the classifiers' one trainer: every network of the width stacks trained
together follows the plain loop of one network alone (SGD with momentum), stops where its own epoch loss
crosses the target and keeps its weights, and its norms are those of nblib.chapters.path_sgd.network_norms;
clear errors."""
import pytest
import torch
from classifier_reference import reference_train
from torch import nn

from nblib import DivergenceError
from nblib.chapters.network_size import (evaluate, first_fit, predict, stack_norms, train_to_loss,
                                         width_stacks)
from nblib.chapters.path_sgd import layered_relu_mlp, network_norms

DT = torch.float64
WIDTHS = [2, 3, 5, 40]


def problems(M=2, n=30, d=6, C=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(M, n, d, generator=g, dtype=DT)
    y = torch.randint(0, C, (M, n), generator=g)
    return X, y


def make_bank(M=2, d=6, C=4, dtype=DT):
    seeds = [[100 * m + k for k in range(len(WIDTHS))] for m in range(M)]
    return width_stacks(WIDTHS, seeds, d_in=d, n_out=C, dtype=dtype, group_width=10), seeds


def test_widths_up_to_the_group_width_share_one_stack():
    bank, _ = make_bank()
    assert bank.groups == [[0, 1, 2], [3]] and len(bank.stacks[0]) == 6 and bank.stacks[0].sizes[1] == 5
    assert [h for (h,) in bank.stacks[0].hidden] == [2, 2, 3, 3, 5, 5]


def test_first_fit_is_the_start_of_the_last_run_of_reached_widths():
    reached = torch.tensor([[0, 1, 0, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [0, 0, 0, 0, 1]]).bool()
    assert first_fit(reached).tolist() == [3, 0, 5, 4]


def test_zero_loss_target_trains_every_network_for_max_epochs():
    X, y = problems()
    bank, _ = make_bank()
    res = train_to_loss(bank, X, y, batch_seeds=[0, 1], lr=0.1, momentum=0.9, batch_size=10,
                        loss_target=0.0, max_epochs=3)
    assert (res["epochs"] == 3).all() and not res["reached"].any()


def test_initialization_is_the_layered_mlp_of_each_seed():
    bank, seeds = make_bank()
    for m in range(2):
        for k, h in enumerate(WIDTHS):
            ref = layered_relu_mlp([6, h, 4], seed=seeds[m][k], dtype=DT)
            for p, q in zip(bank.network(m, k).parameters(), ref.parameters()):
                assert torch.equal(p, q)


def test_networks_stop_at_their_own_epoch_as_the_plain_loop_does_alone():
    X, y = problems(n=20)
    bank, seeds = make_bank()
    res = train_to_loss(bank, X, y, batch_seeds=[1, 2], lr=0.1, momentum=0.9, batch_size=5,
                        loss_target=0.05, max_epochs=120)
    assert res["reached"][:, -1].all()                 # the 40-unit networks memorize 20 points
    assert res["epochs"][0, -1] != res["epochs"][1, -1]           # ... at different epochs
    assert ((res["epochs"] < 120) == res["reached"]).all()
    assert (res["loss"][res["reached"]] < 0.05).all()           # on the whole training set
    for m in range(2):
        for k, h in enumerate(WIDTHS):
            net = layered_relu_mlp([6, h, 4], seed=seeds[m][k], dtype=DT)
            opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
            epoch, losses = reference_train(net, opt, X[m], y[m], epochs=120, batch_size=5, seed=1 + m,
                                            loss_target=0.05)
            assert (epoch or 120) == int(res["epochs"][m, k])
            for p, q in zip(bank.network(m, k).parameters(), net.parameters()):
                torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-11)
            assert res["loss"][m, k] == pytest.approx(losses[-1], rel=1e-9)
            with torch.no_grad():
                wrong = (net(X[m]).argmax(1) != y[m]).double().mean()
            assert res["err"][m, k] == pytest.approx(float(wrong))


def test_norms_errors_and_predictions_match_the_standalone_networks():
    X, y = problems()
    bank, _ = make_bank()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():                      # move every real weight and bias; the padding stays zero
        for stack in bank.stacks:
            (W1, W2), (b1, b2) = stack.weights, stack.biases
            for j, (h,) in enumerate(stack.hidden):
                W1[j, :h] += 0.3 * torch.randn(W1[j, :h].shape, generator=g, dtype=DT)
                W2[j, :, :h] += 0.3 * torch.randn(W2[j, :, :h].shape, generator=g, dtype=DT)
                b1[j, :h] += 0.2
                b2[j] -= 0.1
    norms, (loss, err), pred = stack_norms(bank), evaluate(bank, X, y), predict(bank, X)
    for m in range(2):
        for k in range(len(WIDTHS)):
            net = bank.network(m, k)
            ref = network_norms(net)
            for key in ("path", "l2", "spectral_product", "parameters"):
                assert norms[key][m, k] == pytest.approx(ref[key], rel=1e-10)
            with torch.no_grad():
                out = net(X[m])
            assert torch.equal(pred[m, k], out.argmax(1))
            assert err[m, k] == pytest.approx(float((out.argmax(1) != y[m]).double().mean()))
            assert loss[m, k] == pytest.approx(float(nn.functional.cross_entropy(out, y[m])), rel=1e-10)


def test_divergence_and_bad_inputs_raise_clear_errors():
    X, y = problems()
    bank, _ = make_bank(dtype=torch.float32)
    with pytest.raises(DivergenceError, match="lr"):
        train_to_loss(bank, 1e10 * X.float(), y, batch_seeds=[0, 1], lr=1e6, momentum=0.9,
                      batch_size=10, loss_target=1e-3, max_epochs=20)
    with pytest.raises(ValueError, match="one minibatch seed per problem"):
        train_to_loss(bank, X, y, batch_seeds=[0], lr=0.1, momentum=0.9, batch_size=10,
                      loss_target=0.01, max_epochs=1)
    with pytest.raises(ValueError, match=r"X must be \[M=2"):
        train_to_loss(bank, X[0], y[0], batch_seeds=[0, 1], lr=0.1, momentum=0.9, batch_size=10,
                      loss_target=0.01, max_epochs=1)
    with pytest.raises(ValueError, match="one per width"):
        width_stacks([2, 3], [[0]], d_in=6, n_out=4)
    with pytest.raises(ValueError, match="positive integers"):
        width_stacks([0, 3], [[0, 1]], d_in=6, n_out=4)
